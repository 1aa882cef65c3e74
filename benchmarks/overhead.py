"""Wall-time overhead of each lightning_nas callback on a digits fit, against a plain fit, side by side.

Every callback named in ``lightning_nas.callbacks.__all__`` that has a row in ``CONSTRUCTORS`` is measured at
its default settings; the others are listed as not measured. Runs are interleaved (plain, cb1, cb2, ...,
plain, cb1, ...) and each callback's overhead is the median over repeats of ``t_callback / t_plain - 1``
of runs made back to back, which cancels slow drifts in machine load. The time spent inside the callback's
own hooks, relative to the rest of the same fit, is reported as well (robust to load) and decides the verdict.

    python benchmarks/overhead.py [--epochs 8] [--repeats 3]
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

# One line per callback: name in lightning_nas.callbacks -> (constructor at default settings, budget or None).
# Constructors take the callbacks module so that rows for callbacks missing on this branch cost nothing.
CONSTRUCTORS: dict[str, tuple[Callable[[Any], Any], float | None]] = {
    "AttributionMonitor": (lambda cb: cb.AttributionMonitor(), 0.10),
    "TrainingDynamics": (lambda cb: cb.TrainingDynamics(), 0.03),
    "DecisionPaths": (lambda cb: cb.DecisionPaths(), None),
    "ArchitectureView": (lambda cb: cb.ArchitectureView(), None),
    # compression callbacks change the model they time (a pruned or int8-simulating net trains at another speed):
    # their row is the cost of the whole compressed fit, decisions and optimizer rebuilds included
    "StructuredPruning": (lambda cb: cb.StructuredPruning(amount=0.5, start_epoch=1), None),
    "MagnitudePruning": (lambda cb: cb.MagnitudePruning(amount=0.5, start_epoch=1), None),
    "LowRankFactorization": (lambda cb: cb.LowRankFactorization(energy=0.9, start_epoch=1), None),
    "QuantizationAware": (lambda cb: cb.QuantizationAware(start_epoch=1, measure=False), None),
    "KnowledgeDistillation": (lambda cb: cb.KnowledgeDistillation(_teacher()), None),
}


def _teacher() -> Any:
    from lightning_nas.models import DigitsCNN

    return DigitsCNN(64)


_HOOKS = ("setup", "teardown", "state_dict", "load_state_dict")


def _timed(cb: Any) -> Any:
    """Wrap the callback's own hook methods to add the wall time spent inside them to ``cb._bench_s``."""
    import lightning as L

    cb._bench_s = 0.0
    for name in dir(type(cb)):
        if not (name.startswith("on_") or name in _HOOKS) or getattr(type(cb), name) is getattr(L.Callback, name, None):
            continue
        fn = getattr(cb, name)

        def wrapper(*a: Any, _fn: Callable = fn, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                cb._bench_s += time.perf_counter() - t0

        setattr(cb, name, wrapper)
    return cb


def _fit(make_callbacks: Callable[[], list], epochs: int, root: Path) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one fit."""
    import lightning as L

    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import Classifier, DigitsCNN

    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    module = Classifier(DigitsCNN(32), lr=3e-3)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=make_callbacks(),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    import torch

    import lightning_nas.callbacks as cbmod
    from benchmarks._report import table, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # one thread: far less noise on a shared machine

    names = [n for n in cbmod.__all__ if n != "LightningNASCallback"]
    measured = [n for n in names if n in CONSTRUCTORS]
    skipped = [n for n in names if n not in CONSTRUCTORS]
    configs: dict[str, Callable[[], list]] = {"plain fit": lambda: []}
    for n in measured:
        configs[n] = lambda n=n: [_timed(CONSTRUCTORS[n][0](cbmod))]
    times: dict[str, list[float]] = {k: [] for k in configs}
    ratios: dict[str, list[float]] = {n: [] for n in measured}
    cpu_ratios: dict[str, list[float]] = {n: [] for n in measured}
    inside: dict[str, list[float]] = {n: [] for n in measured}
    with tempfile.TemporaryDirectory() as tmp:
        for n, make in configs.items():  # imports and first-call costs are paid once per process, not per fit
            _fit(make, 1, Path(tmp) / f"warmup-{n}")
        for r in range(args.repeats):
            plain, plain_cpu = _fit(configs["plain fit"], args.epochs, Path(tmp) / f"plain{r}")
            times["plain fit"].append(plain)
            for n in measured:
                made: list = []
                t, cpu = _fit(
                    lambda n=n, made=made: made.extend(configs[n]()) or made, args.epochs, Path(tmp) / f"{n}{r}"
                )
                times[n].append(t)
                ratios[n].append(t / plain - 1.0)
                cpu_ratios[n].append(cpu / plain_cpu - 1.0)
                hook_s = made[0]._bench_s
                inside[n].append(hook_s / max(t - hook_s, 1e-9))
                print(
                    f"repeat {r}: {n:<20} {t:6.2f} s vs plain {plain:6.2f} s ({100 * (t / plain - 1):+.1f}%)",
                    flush=True,
                )
    rows = [["plain fit", statistics.median(times["plain fit"]), "-", "-", "-", "-", "-"]]
    for n in measured:
        over = statistics.median(ratios[n])
        cpu_over = statistics.median(cpu_ratios[n])
        hooks = statistics.median(inside[n])
        budget = CONSTRUCTORS[n][1]
        verdict = "-" if budget is None else ("ok" if hooks <= budget else "OVER")
        rows.append(
            [
                n,
                statistics.median(times[n]),
                f"{100 * over:+.1f}%",
                f"{100 * cpu_over:+.1f}%",
                f"{100 * hooks:.1f}%",
                "-" if budget is None else f"<= {100 * budget:.0f}%",
                verdict,
            ]
        )
    body = (
        f"Digits fit: `Classifier(DigitsCNN(32))`, batch 64, {args.epochs} epochs, CPU, 1 thread, no logger "
        f"(the file sink still writes), each callback at its default settings; median of {args.repeats} "
        "interleaved repeats.\n\n"
        + "*wall* and *CPU* overheads are paired differences of back-to-back fits (CPU: this process's CPU "
        "time, far less sensitive to other load on the machine); *time in hooks* is the wall time spent inside "
        "the callback's own hooks divided by the rest of the same fit, which does not move with machine load. "
        "The verdict uses time in hooks. On an idle machine the three agree; on a busy one trust time in hooks "
        "only.\n\n"
        + table(
            [
                "configuration",
                "fit wall time (s)",
                "wall overhead",
                "CPU overhead",
                "time in hooks",
                "budget",
                "verdict",
            ],
            rows,
        )
    )
    if skipped:
        body += f"\n\nNot measured (no row in `CONSTRUCTORS` of `benchmarks/overhead.py`): {', '.join(skipped)}."
    path = write_section("overhead", "Callback overhead on a digits fit", body, args)
    print(body)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
