"""Per-layer sensitivity: how much validation accuracy drops when *one* layer alone is perturbed.

The table format is shared by every compression method so one table can hold pruning and quantization:
columns ``SENSITIVITY_COLUMNS = ["layer", "method", "level", "accuracy", "drop"]`` where ``method`` names the
perturbation (``"prune_l1"``, ``"quant_int8"``...), ``level`` its strength (a pruning ratio, a bit width),
``accuracy`` the validation accuracy of the perturbed model and ``drop = baseline - accuracy`` (fractions).
It is logged under the tracker key ``explain/sensitivity``.

Reuse for another method: build ``{(layer, method, level): fn}`` where ``fn(model_copy)`` perturbs a deep
copy of the model in place (or returns a replacement module), and call ``sensitivity_table``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from lightning_nas._modules import eval_mode

SENSITIVITY_KEY = "explain/sensitivity"
SENSITIVITY_COLUMNS = ["layer", "method", "level", "accuracy", "drop"]
PerturbFn = Callable[[nn.Module], "nn.Module | None"]


ForwardFn = Callable[[nn.Module, Any], torch.Tensor]


def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    forward_fn: ForwardFn | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` batches ``(x, y, ...)`` (eval mode, no grad; mode restored).

    ``forward_fn(model, x)`` gives the logits (default ``model(x)``), e.g. when ``x`` goes to a submodule.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain import evaluate_accuracy
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
        >>> batches = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))]
        >>> evaluate_accuracy(model, batches)
        0.5
    """
    fwd = forward_fn or (lambda m, x: m(x))
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    with eval_mode(model):
        correct = total = 0
        with torch.no_grad():
            for batch in loader:
                x, y = apply_to_collection(batch[0], torch.Tensor, lambda t: t.to(device)), batch[1].to(device)
                correct += int((fwd(model, x).argmax(-1) == y).sum())
                total += int(y.numel())
    if total == 0:
        raise ValueError("evaluate_accuracy: `loader` yielded no samples")
    return correct / total


def sensitivity_table(
    model: nn.Module,
    loader: Iterable[Any],
    perturb_fns: Mapping[tuple[str, str, float], PerturbFn],
    baseline: float | None = None,
    copy_fn: Callable[[nn.Module], nn.Module] = copy.deepcopy,
    forward_fn: ForwardFn | None = None,
) -> list[list[Any]]:
    """Rows ``[layer, method, level, accuracy, drop]``, one per entry of ``perturb_fns``.

    Args:
        model: the trained model (left untouched: every perturbation runs on a deep copy).
        loader: validation batches ``(x, y)``.
        perturb_fns: ``{(layer, method, level): fn}``; ``fn(copy)`` perturbs the copy in place or returns a
            replacement module.
        baseline: accuracy of the unperturbed model (measured when ``None``).
        copy_fn: how to copy the model for each perturbation (e.g. a ``deepcopy`` that shares a trainer).
        forward_fn: ``forward_fn(model, x)`` gives the logits of a batch's inputs (default ``model(x)``).

    Examples:
        Which layer hurts most when half its channels go? (Untrained here: every drop is noise.)

        >>> import torch
        >>> from lightning_nas.explain import SENSITIVITY_COLUMNS, prune_perturbations, rank_layers, sensitivity_table
        >>> from lightning_nas.models import DigitsCNN
        >>> model = DigitsCNN(width=8).eval()
        >>> x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
        >>> fns = prune_perturbations(model, x[:2], levels=[0.5])
        >>> rows = sensitivity_table(model, [(x, y)], fns)
        >>> SENSITIVITY_COLUMNS
        ['layer', 'method', 'level', 'accuracy', 'drop']
        >>> sorted((r[0], r[1], r[2]) for r in rows)
        [('features.0', 'prune_l1', 0.5), ('features.3', 'prune_l1', 0.5)]
        >>> [name for name, _ in rank_layers(rows)] in (["features.0", "features.3"], ["features.3", "features.0"])
        True
    """
    if not perturb_fns:
        raise ValueError("sensitivity_table: `perturb_fns` is empty")
    base = evaluate_accuracy(model, loader, forward_fn=forward_fn) if baseline is None else float(baseline)
    rows = []
    for (layer, method, level), fn in perturb_fns.items():
        m = copy_fn(model)
        out = fn(m)
        m = out if isinstance(out, nn.Module) else m
        acc = evaluate_accuracy(m, loader, forward_fn=forward_fn)
        rows.append([layer, method, float(level), acc, base - acc])
    return rows


def prune_perturbations(
    model: nn.Module,
    example_inputs: Any,
    levels: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    layers: Sequence[str] | None = None,
    importance: str = "l1",
    ignore: Sequence[str] = (),
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[tuple[str, str, float], PerturbFn]:
    """Perturbations that physically prune ``level`` of one layer's channels (all others untouched);
    ``forward_fn`` as in ``compress.prune.prune_structured``.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain import prune_perturbations
        >>> from lightning_nas.models import DigitsCNN
        >>> fns = prune_perturbations(DigitsCNN(width=8), torch.rand(2, 1, 8, 8), levels=[0.25, 0.5])
        >>> sorted(fns)  # {(layer, method, level): fn(copy_of_model)}  # doctest: +NORMALIZE_WHITESPACE
        [('features.0', 'prune_l1', 0.25), ('features.0', 'prune_l1', 0.5),
         ('features.3', 'prune_l1', 0.25), ('features.3', 'prune_l1', 0.5)]
    """
    from lightning_nas.compress.prune import prunable_layers, prune_structured

    for lv in levels:
        if not 0.0 < lv < 1.0:
            raise ValueError(f"`levels` must lie in (0, 1), got {lv!r}")
    names = list(prunable_layers(model, example_inputs, ignore, forward_fn)) if layers is None else list(layers)
    if not names:
        raise ValueError("prune_perturbations: no prunable layer")

    def make(layer: str, level: float) -> PerturbFn:
        def perturb(m: nn.Module) -> None:  # in place
            prune_structured(m, example_inputs, {layer: level}, importance, forward_fn=forward_fn)

        return perturb

    return {(n, f"prune_{importance}", float(lv)): make(n, float(lv)) for n in names for lv in levels}


def rank_layers(rows: Sequence[Sequence[Any]], method: str | None = None) -> list[tuple[str, float]]:
    """Layers ordered most-sensitive first by mean drop over levels (area under the drop curve).

    Examples:
        >>> from lightning_nas.explain import rank_layers
        >>> rows = [["conv1", "prune_l1", 0.5, 0.90, 0.02], ["conv1", "prune_l1", 0.9, 0.70, 0.22],
        ...         ["conv2", "prune_l1", 0.5, 0.91, 0.01], ["conv2", "prune_l1", 0.9, 0.88, 0.04]]
        >>> [(name, round(drop, 3)) for name, drop in rank_layers(rows)]
        [('conv1', 0.12), ('conv2', 0.025)]
    """
    drops: dict[str, list[float]] = {}
    for layer, meth, _level, _acc, drop in rows:
        if method is None or meth == method:
            drops.setdefault(layer, []).append(float(drop))
    return sorted(((k, sum(v) / len(v)) for k, v in drops.items()), key=lambda t: -t[1])


def log_sensitivity(tracker: Any, rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
    """Table ``explain/sensitivity`` plus, per method, accuracy-vs-level curves ``explain/sensitivity/<method>``."""
    tracker.log_table(SENSITIVITY_KEY, SENSITIVITY_COLUMNS, rows, step=step)
    for method in sorted({r[1] for r in rows}):
        sub = [r for r in rows if r[1] == method]
        levels = sorted({r[2] for r in sub})
        ys = {}
        for layer in dict.fromkeys(r[0] for r in sub):
            acc = {r[2]: r[3] for r in sub if r[0] == layer}
            if all(lv in acc for lv in levels):
                ys[layer] = [acc[lv] for lv in levels]
        if ys:
            tracker.log_line_series(
                f"{SENSITIVITY_KEY}/{method}",
                levels,
                ys,
                title=f"validation accuracy when one layer alone is perturbed ({method})",
                xname="level",
                step=step,
            )
