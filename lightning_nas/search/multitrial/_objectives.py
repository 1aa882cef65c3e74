"""What a trial is scored on: logged metrics and measured costs, each with a direction.

``objectives={"val_acc": "maximize", "latency_ms": "minimize"}``. A key in ``COSTS`` is measured on the
trained module with ``lightning_nas.deploy.measure`` (never estimated); any other key is read from
``trainer.callback_metrics`` after the fit (its last logged value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: measured costs -> the ``Measurement`` field they come from
COSTS = {
    "latency_ms": "latency_ms",
    "params": "params",
    "macs": "macs",
    "flops": "flops",
    "size_bytes": "size_bytes",
    "onnx_latency_ms": "onnx_latency_ms",
}
DIRECTIONS = ("maximize", "minimize")


def parse_objectives(objectives: Any) -> dict[str, str]:
    """Validate ``objectives`` (a mapping, or one metric name meaning maximise); return ``{key: direction}``."""
    if isinstance(objectives, str):
        objectives = {objectives: "maximize"}
    if not isinstance(objectives, Mapping) or not objectives:
        raise ValueError(
            "`objectives` must be a non-empty mapping {metric: 'maximize'|'minimize'}, e.g. "
            f"{{'val_acc': 'maximize', 'latency_ms': 'minimize'}}; got {objectives!r}"
        )
    out = {}
    for key, direction in objectives.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"`objectives`: every key must be a metric name, got {key!r}")
        d = str(direction).lower()
        if d in ("max", "min"):
            d += "imize"
        if d not in DIRECTIONS:
            raise ValueError(f"`objectives[{key!r}]` must be one of {list(DIRECTIONS)}, got {direction!r}")
        out[key] = d
    return out


def example_input_of(datamodule: Any, example_input: Any = None) -> torch.Tensor:
    """The input costs are measured on: ``example_input``, else ``datamodule.example_input(1)``, else the first
    sample of the validation loader."""
    if example_input is not None:
        return example_input
    if hasattr(datamodule, "example_input"):
        return datamodule.example_input(1)
    batch = next(iter(datamodule.val_dataloader()))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise ValueError("cannot find an input to measure costs on: pass `example_input=` to run()")
    return x[:1]


def evaluate(
    objectives: Mapping[str, str],
    metrics: Mapping[str, Any],
    module: torch.nn.Module | None,
    example_input: Any,
    measure_repeats: int = 20,
) -> tuple[dict[str, float], dict[str, float]]:
    """Return ``(values of the objectives, every number known about the trial)``.

    Raises ``ValueError`` naming the objectives never logged and the keys that were.
    """
    numbers = {
        k: float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in metrics.items()
        if isinstance(v, (int, float, torch.Tensor)) and (not isinstance(v, torch.Tensor) or v.numel() == 1)
    }
    missing = [k for k in objectives if k not in COSTS and k not in numbers]
    if missing:
        raise ValueError(
            f"objective(s) {missing} were never logged by the trial's fit; logged keys: "
            f"{sorted(numbers)}; measured costs available: {sorted(COSTS)}"
        )
    wanted = [k for k in objectives if k in COSTS]
    if wanted:
        if module is None:
            raise ValueError(f"measured objective(s) {wanted} need the trial's module, got module=None")
        from lightning_nas.deploy import measure

        latency = any(k == "latency_ms" for k in wanted)
        onnx = any(k == "onnx_latency_ms" for k in wanted)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        x = example_input.to(device) if isinstance(example_input, torch.Tensor) else example_input
        m = measure(module, x, latency=latency, onnx=onnx, repeats=measure_repeats, warmup=3)
        for k in wanted:
            v = getattr(m, COSTS[k])
            if v is None:
                raise ValueError(f"objective {k!r} could not be measured on {type(module).__name__}: {m.notes}")
            numbers[k] = float(v)
    return {k: numbers[k] for k in objectives}, numbers
