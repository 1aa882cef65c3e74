"""Fixed cost of each callback at the end of a fit, on a ResNet-18 (32x32 inputs, batch 64), against one epoch.

Work a callback does once at the end (the decision-path ablations, QAT's sensitivity table, int8 conversion and
measurement, the final architecture view, the search's op ablation or evolution) is timed inside its own hooks
(``on_train_end``, ``on_fit_end``, ``teardown``, and ``on_train_epoch_end`` for callbacks that explain each
epoch), in the same run as a plain one-epoch fit of the same model. "before" runs each callback with its budget
arguments lifted (what v0.1 did: every layer ablated, every quantized layer in the sensitivity table on four
batches, 20 timing repeats); "after" runs the defaults. Inputs are synthetic (timing only). Goal: every
end-of-fit cost at defaults <= 10% of one epoch.

    python benchmarks/end_of_fit.py [--steps 50] [--width 64] [--quick]   (--quick writes results/quick/)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_END_HOOKS = (
    "on_train_end",
    "on_fit_end",
    "teardown",
    "on_train_epoch_end",
    "on_sanity_check_end",
    "on_validation_end",
)


def _timed(cb: Any) -> Any:
    """The callback, its end-of-fit hooks timed (``_end_s``: their total; validation-end hooks are not counted)."""
    from benchmarks._timing import time_hooks

    return time_hooks(cb, _END_HOOKS, skip=("on_sanity_check_end", "on_validation_end"))


def _end_s(cb: Any) -> float:
    return sum(cb._hook_s.values())


def _fit(callbacks: list, steps: int, width: int, root: Path, searchable: bool = False) -> float:
    import lightning as L

    from benchmarks._timing import resnet_module, synthetic_images, trainer

    L.seed_everything(0, verbose=False)
    train, val = synthetic_images(steps)
    t0 = time.perf_counter()
    trainer(root, callbacks).fit(resnet_module(width, searchable), train, val)
    return time.perf_counter() - t0


def configs(cb: Any) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], bool]]:
    """name -> (before: budgets lifted, after: defaults, needs a search space)."""
    return {
        "DecisionPaths": (lambda: cb.DecisionPaths(max_ablations=None), lambda: cb.DecisionPaths(), False),
        "QuantizationAware": (lambda: cb.QuantizationAware(**UNBOUNDED_QAT), lambda: cb.QuantizationAware(), False),
        "AttributionMonitor": (lambda: cb.AttributionMonitor(), lambda: cb.AttributionMonitor(), False),
        "ArchitectureView": (lambda: cb.ArchitectureView(), lambda: cb.ArchitectureView(), False),
        "DifferentiableNAS": (lambda: cb.DifferentiableNAS(), lambda: cb.DifferentiableNAS(), True),
        "SubnetSampling": (lambda: cb.SubnetSampling(), lambda: cb.SubnetSampling(), True),
    }


# QuantizationAware as v0.1 ran it at the end: the sensitivity table over every quantized layer on 4 batches
UNBOUNDED_QAT: dict[str, Any] = {
    "explain_batches": 4,
    "sensitivity_layers": None,
    "onnx_path": str(Path(tempfile.gettempdir()) / "end_of_fit_int8.onnx"),
}


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    import torch

    import lightning_nas.callbacks as cbmod
    from benchmarks._report import table, write_section
    from benchmarks._timing import resnet_module

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="training steps of batch 64 in the one epoch")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: ResNet-18 itself)")
    ap.add_argument("--quick", action="store_true", help="width 16, 10 steps; writes results/quick/")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.width = 10, 16
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _fit([], 2, args.width, Path(tmp) / "warmup")
        plains = [_fit([], args.steps, args.width, Path(tmp) / "plain0")]
        print(f"plain one-epoch fit ({args.steps} steps): {plains[0]:.1f} s", flush=True)
        results = []
        for k, (name, (before, after, search)) in enumerate(configs(cbmod).items()):
            if k % 2:  # plain fits interleaved with the callbacks': the median is the epoch the ratios use
                plains.append(_fit([], args.steps, args.width, Path(tmp) / f"plain{k}"))
                print(f"plain one-epoch fit: {plains[-1]:.1f} s", flush=True)
            ends = []
            for label, make in (("before", before), ("after", after)):
                cb = _timed(make())
                _fit([cb], args.steps, args.width, Path(tmp) / f"{name}-{label}", searchable=search)
                ends.append(_end_s(cb))
                print(f"{name:<20} {label:<6} {ends[-1]:6.2f} s at the end", flush=True)
            results.append((name, ends))
        plain = statistics.median(plains)
        for name, (b, a) in results:
            rows.append(
                [
                    name,
                    b,
                    f"{100 * b / plain:.1f}%",
                    a,
                    f"{100 * a / plain:.1f}%",
                    "ok" if a <= 0.10 * plain else "OVER",
                ]
            )
    body = (
        f"ResNet-18 (base width {args.width}, {sum(p.numel() for p in resnet_module(args.width).parameters()):,}"
        f" parameters), 3x32x32 synthetic inputs, batch 64; one epoch = {args.steps} steps + 4 validation "
        f"batches: **{plain:.1f} s** plain (median of {len(plains)} plain fits interleaved with the others: "
        f"{', '.join(f'{p:.1f}' for p in plains)} s). CPU, {torch.get_num_threads()} threads.\n\n"
        + table(["callback", "before (s)", "before / epoch", "after (s)", "after / epoch", "<= 10%"], rows)
        + '\n\n"before": budgets lifted as v0.1 ran (DecisionPaths `max_ablations=None`; QuantizationAware '
        "`explain_batches=4, sensitivity_layers=None` and the ONNX Runtime measurement, which v0.1 made without "
        "`onnx_path`; the rows without a budget change run the same settings twice). "
        '"after": defaults. Time inside the callback\'s end-of-fit and end-of-epoch hooks.'
    )
    path = write_section("end_of_fit", "End-of-fit cost on a ResNet-18", body, args)  # --quick: results/quick/
    print(body)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
