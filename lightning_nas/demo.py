"""``lightning-nas demo``: the pipeline on digits, offline, streamed to one W&B run.

Stages are functions of a shared ``_DemoState`` so that each capability adds its own stage; a stage may return a
short summary for its line of progress. What a person sees: one line per stage (on a terminal, with a bar for
the epochs), the summary table, and where the files are. Lightning's messages, warnings, W&B's console output and
anything a stage prints show only with ``verbose=True`` (``lightning-nas demo --verbose``).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from typing_extensions import override

from lightning_nas.data import DigitsDataModule
from lightning_nas.deploy import ModelCard, export, measure
from lightning_nas.models import Classifier, DigitsCNN


@dataclass
class _DemoState:
    out_dir: Path
    max_epochs: int
    online: bool
    datamodule: DigitsDataModule
    module: L.LightningModule | None = None
    logger: Any = None
    card: ModelCard = field(default_factory=lambda: ModelCard("digits-demo"))
    rows: list[dict[str, Any]] = field(default_factory=list)  # summary table: one row per stage
    arch: dict[str, str] | None = None  # set by the "search" stage
    bundle_dir: Path | None = None  # set by the "bundle" stage
    console: _Console | None = None  # the progress lines (None: no progress shown)


class _Console:
    """The demo's own lines, written to ``stream`` (the real stdout, even while the stages' output is hidden).

    One line per stage, written when the stage ends; on a terminal the line is shown from the start and shows
    the epochs of the running fit as a bar."""

    def __init__(self, stream: TextIO, verbose: bool = False) -> None:
        self.stream, self.verbose = stream, verbose
        self.live = not verbose and stream.isatty()
        self.prefix, self.t0 = "", 0.0

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def start(self, i: int, n: int, name: str) -> None:
        self.prefix, self.t0 = f"[{i}/{n}] {name:<10} ", time.perf_counter()
        if self.verbose:
            self.write(self.prefix + "...\n")
        elif self.live:
            self.write(self.prefix)

    def progress(self, done: float, text: str) -> None:
        if self.live:
            k = round(20 * min(max(done, 0.0), 1.0))
            self.write(f"\r\033[K{self.prefix}[{'#' * k}{'.' * (20 - k)}] {text}")

    def end(self, summary: str | None) -> None:
        line = f"{self.prefix}{summary or 'done'} ({time.perf_counter() - self.t0:.1f} s)"
        self.write(("\r\033[K" if self.live else "") + line + "\n")


class _EpochProgress(L.Callback):
    """Feeds the console's bar: epoch and batch of the running fit."""

    def __init__(self, console: _Console) -> None:
        self.console = console

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = trainer.num_training_batches
        n = int(n) if 0 < n < float("inf") else batch_idx + 1
        epochs = max(trainer.max_epochs or 1, 1)
        self.console.progress(
            (trainer.current_epoch + min(batch_idx + 1, n) / n) / epochs, f"epoch {trainer.current_epoch + 1}/{epochs}"
        )


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: Lightning's and Optuna's INFO lines, Python warnings, W&B's console output and anything
    printed go nowhere. If the block fails, what was hidden is written to stderr before the error."""
    if verbose:
        yield
        return
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric", "optuna")
    levels = {name: logging.getLogger(name).level for name in names}
    silent = os.environ.get("WANDB_SILENT")
    hidden = io.StringIO()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ["WANDB_SILENT"] = "true"
        with warnings.catch_warnings(), redirect_stdout(hidden), redirect_stderr(hidden):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(hidden.getvalue()[-20_000:])
        raise
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if silent is None:
            os.environ.pop("WANDB_SILENT", None)
        else:
            os.environ["WANDB_SILENT"] = silent


def _trainer(state: _DemoState, callbacks: list | None = None, max_epochs: int | None = None) -> L.Trainer:
    progress = [_EpochProgress(state.console)] if state.console is not None and state.console.live else []
    return L.Trainer(
        max_epochs=max_epochs or state.max_epochs,
        logger=state.logger,
        callbacks=(callbacks or []) + progress,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(state.out_dir),
        enable_checkpointing=False,
        deterministic=True,
    )


def _row_summary(row: dict[str, Any]) -> str:
    return f"test_acc {row['test_acc']:.4f}, {row['size_bytes'] / 1024:.0f} KiB"


def _record(state: _DemoState, stage: str, model: torch.nn.Module, test_acc: float) -> dict[str, Any]:
    m = measure(model, state.datamodule.example_input(64))
    row = {
        "stage": stage,
        "test_acc": test_acc,
        "params": m.params,
        "size_bytes": m.size_bytes,
        "macs": m.macs,
        "latency_ms": m.latency_ms,
        "onnx_latency_ms": m.onnx_latency_ms,
    }
    state.rows.append(row)
    state.card.add_stage(stage, test_acc=test_acc, measurements=m)
    return row


def _stage_search(state: _DemoState) -> str:
    """A few epochs of DARTS over two LayerChoices put into DigitsCNN; the found net feeds the next stages."""
    from torch import nn

    from lightning_nas import space
    from lightning_nas.callbacks import DifferentiableNAS

    def block(label: str, c: int) -> space.LayerChoice:
        def conv(k: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU())

        return space.LayerChoice({"conv3": conv(3), "conv1": conv(1), "skip": nn.Identity()}, label=label)

    net = DigitsCNN(width=16)
    f = net.features
    net.features = nn.Sequential(*f[:3], block("block1", 16), *f[3:6], block("block2", 32), f[6])
    nas = DifferentiableNAS(mode="darts", seed=0)
    module = Classifier(net, lr=3e-3)
    _trainer(state, [nas], max_epochs=min(3, state.max_epochs)).fit(module, datamodule=state.datamodule)
    state.arch = nas.export()
    found = space.freeze(net, state.arch)
    state.module = Classifier(found, lr=3e-3)  # later stages train and compress the found architecture
    acc = _trainer(state).test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    row = _record(state, "search", found, acc)
    state.card.stages[-1].update(arch=state.arch, reasons=nas.reasons(), space_size=space.size(net))
    return f"DARTS chose {', '.join(f'{k}={v}' for k, v in state.arch.items())}; {_row_summary(row)}"


def _stage_train(state: _DemoState) -> str:
    if state.module is None:  # no search stage ran: the reference CNN
        state.module = Classifier(DigitsCNN(width=16), lr=3e-3)
    trainer = _trainer(state)
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    return _row_summary(_record(state, "train", state.module.net, acc))


def _stage_bundle(state: _DemoState) -> str:
    """Bundle the final net (ONNX float + int8, TorchScript, card, drift profile); the end of the demo says how to
    serve it."""
    import copy

    from lightning_nas.deploy import bundle

    net = state.module.net.eval()
    card = copy.deepcopy(state.card)
    card.metrics["test_acc"] = state.rows[-1]["test_acc"] if state.rows else None
    int8 = state.out_dir / "model_int8.onnx"  # the QAT stage's int8 model; else post-training quantization
    out = bundle(
        net,
        state.datamodule.example_input(64),
        state.out_dir / "bundle",
        int8=int8 if int8.exists() else True,
        card=card,
        reference_data=state.datamodule.split("train").tensors[0],
        metrics=dict(card.metrics),
        overwrite=True,
    )
    state.bundle_dir = Path(out)
    return "ONNX float and int8, TorchScript, model card, drift profile"


def _stage_multitrial(state: _DemoState) -> str:
    """Multi-trial hyperparameter search (TPE, 4 short trials) of lr and weight decay for the current network;
    the train stage then trains it with the best values. The trials table goes to the demo's W&B run."""
    import copy

    from lightning_nas.search import run
    from lightning_nas.tracking import Tracker

    template = state.module.net if state.module is not None else DigitsCNN(width=16)

    def build(trial):
        return Classifier(
            copy.deepcopy(template),
            lr=trial.loguniform("lr", 1e-3, 1e-2),
            weight_decay=trial.choice("weight_decay", [0.0, 1e-4, 1e-3]),
        )

    res = run(
        build,
        state.datamodule,
        objectives={"val_acc": "maximize"},
        n_trials=4,
        strategy="tpe",
        seed=0,
        out_dir=state.out_dir / "multitrial",
        trainer_kwargs={"max_epochs": 1, "deterministic": True},
    )
    Tracker(loggers=[state.logger], files_dir=state.out_dir / "multitrial" / "demo").log_table(
        "search/trials",
        ["number", "lr", "weight_decay", "val_acc"],
        [
            [t.number, t.params["lr"], t.params["weight_decay"], t.value]
            for t in res.study.trials
            if t.value is not None
        ],
        step=0,
    )
    best = res.best_params
    state.module = Classifier(copy.deepcopy(template), lr=best["lr"], weight_decay=best["weight_decay"])
    state.card.metrics["multitrial_best"] = {"params": best, "val_acc": res.best_values["val_acc"]}
    return (
        f"TPE, {len(res.study.trials)} trials: lr {best['lr']:.2g}, weight_decay {best['weight_decay']:g} "
        f"(val_acc {res.best_values['val_acc']:.4f})"
    )


def _stage_explain(state: _DemoState) -> str:
    """Two more epochs of the current model with the explain callbacks attached (maps, AOPC, dynamics, paths)."""
    from lightning_nas.callbacks import ArchitectureView, AttributionMonitor, DecisionPaths, TrainingDynamics

    cbs = [
        AttributionMonitor(n_samples=20),
        TrainingDynamics(every_n_steps=5, histogram_every_n_steps=20),
        DecisionPaths(n_samples=50),
        ArchitectureView(),
    ]
    trainer = _trainer(state, callbacks=cbs, max_epochs=2)
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    return "attributions, dynamics, decision paths, architecture view; " + _row_summary(
        _record(state, "explain", state.module.net, acc)
    )


def _test_acc(model: torch.nn.Module, state: _DemoState) -> float:
    x, y = state.datamodule.split("test").tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def _stage_distill(state: _DemoState) -> str:
    """A plain DigitsCNN student (no searched blocks) learns from the trained model (KD); it becomes the model of
    later stages."""
    from lightning_nas.callbacks import KnowledgeDistillation

    teacher = state.module.net
    student = Classifier(DigitsCNN(width=16), lr=1e-2)
    kd = KnowledgeDistillation(teacher, temperature=4.0, alpha=0.7)
    trainer = _trainer(state, [kd])
    trainer.fit(student, datamodule=state.datamodule)
    acc = trainer.test(student, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    state.module = student
    row = _record(state, "distill", student.net, acc)
    row["agreement"] = kd.history[-1]["distill/agreement"] if kd.history else None
    state.card.stages[-1].update(
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        temperature=4.0,
        alpha=0.7,
        agreement=row["agreement"],
    )
    agreement = f", agreement {row['agreement']:.3f}" if isinstance(row["agreement"], float) else ""
    return f"plain CNN student{agreement}; {_row_summary(row)}"


# The quantize stage keeps the first conv block float: on the pruned net (8 channels from one input channel) ONNX
# Runtime's int8 QLinearConv is several times slower than its fp32 Conv and made the int8 model slower than the
# fp32 one; the other layers run int8. It fine-tunes at a tenth of the module's learning rate with BatchNorm
# statistics frozen (torch's fused Conv+BN QAT modules otherwise knocked the pruned net down by ~20 points in
# the first epoch). Measured: BENCHMARKS.md, "make demo's quantize stage" (benchmarks/qat_demo.py).
QUANT_IGNORE = ("features.0", "features.1", "features.2")
QUANT_LR_SCALE = 0.1


def _qat_fit(
    state: _DemoState, module: L.LightningModule, ignore: tuple[str, ...] = QUANT_IGNORE, onnx_path: str | None = None
) -> Any:
    """Two epochs of QAT fine-tuning of ``module`` (its ``lr`` scaled by ``QUANT_LR_SCALE`` for the fit)."""
    from lightning_nas.callbacks import QuantizationAware

    qat = QuantizationAware(freeze_bn_after=0, ignore=list(ignore), onnx_path=onnx_path)
    lr = module.lr
    module.lr = lr * QUANT_LR_SCALE
    try:
        _trainer(state, [qat], max_epochs=2).fit(module, datamodule=state.datamodule)
    finally:
        module.lr = lr
    return qat


def _stage_quantize(state: _DemoState) -> str:
    """Two epochs of QAT fine-tuning of the current model, then the real int8 model (torch) and its ONNX file."""
    from lightning_nas.compress.quantize import allow_int8_kernels

    qat = _qat_fit(state, state.module, onnx_path=str(state.out_dir / "model_int8.onnx"))
    with allow_int8_kernels():  # the demo's trainers are deterministic; int8 kernels need the flag lifted
        row = _record(state, "quantize", qat.int8_model, _test_acc(qat.int8_model, state))
    state.card.stages[-1].update(
        onnx_int8=str(state.out_dir / "model_int8.onnx"),
        backend="x86",
        size_ratio=qat.measurements.get("quant/size_ratio"),
        speedup=qat.measurements.get("quant/speedup"),
        float_layers=list(QUANT_IGNORE),
        qat_lr_scale=QUANT_LR_SCALE,
    )
    return f"int8 after 2 QAT epochs; {_row_summary(row)}"


def _stage_prune(state: _DemoState) -> str:
    """Remove half of the channels of the trained model (physically), then fine-tune (half the training epochs)."""
    from lightning_nas.callbacks import StructuredPruning

    trainer = _trainer(
        state, callbacks=[StructuredPruning(amount=0.5, start_epoch=0)], max_epochs=max(2, state.max_epochs // 2)
    )
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    return "half of the channels removed; " + _row_summary(_record(state, "prune", state.module.net, acc))


# The pipeline, in order: each capability contributes one stage.
STAGES = [
    ("search", _stage_search),
    ("multitrial", _stage_multitrial),
    ("train", _stage_train),
    ("explain", _stage_explain),
    ("distill", _stage_distill),
    ("prune", _stage_prune),
    ("quantize", _stage_quantize),
    ("bundle", _stage_bundle),
]


def run_demo(
    max_epochs: int = 8,
    online: bool = False,
    out_dir: str | Path = "nas_runs/demo",
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run every stage, print one line per stage, the summary table and where the files are; write the model
    card; return a dict of results. ``verbose`` also shows Lightning's messages, warnings and W&B's output."""
    console = _Console(sys.stdout, verbose)
    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    with _quiet(verbose):
        from lightning_nas.tracking import FallbackWandbLogger as WandbLogger

        L.seed_everything(seed, workers=True, verbose=False)
        out.mkdir(parents=True, exist_ok=True)
        if not online:
            os.environ.setdefault("WANDB_MODE", "offline")
        logger = WandbLogger(project="lightning-nas-demo", save_dir=str(out), offline=not online)
        state = _DemoState(
            out_dir=out,
            max_epochs=max_epochs,
            online=online,
            datamodule=DigitsDataModule(batch_size=64, seed=seed),
            logger=logger,
            console=console,
        )
        state.card.input_spec = {
            "name": "input",
            "dtype": "float32",
            "shape": ["batch", 1, 8, 8],
            "range": [0.0, 1.0],
            "normalisation": "pixel / 16",
        }
        for i, (name, stage) in enumerate(STAGES, 1):
            console.start(i, len(STAGES), name)
            summary = stage(state)
            console.end(summary)
        model = state.module.net.eval()
        state.card.set_model(model)
        state.card.metrics["test_acc"] = state.rows[-1]["test_acc"]
        state.card.measurements = {k: v for k, v in state.rows[-1].items() if k != "stage"}
        onnx_path = export(model, state.datamodule.example_input(1), out / "model.onnx", "onnx")
        card_path = state.card.save(out / "model_card.json")
        run_dir = Path(logger.experiment.dir).parent
        import wandb

        wandb.finish()
        from lightning_nas.report import build_report

        report_path = build_report(run_dir, out / "report.html", title="lightning-nas demo")
    console.write("\n")
    _print_table(state.rows, console.stream)
    int8 = out / "model_int8.onnx"
    files = [
        ("model card", card_path),
        ("ONNX model", onnx_path),
        ("int8 ONNX", int8 if int8.exists() else None),
        ("bundle", state.bundle_dir),
        ("HTML report", report_path),
        (f"W&B run ({'online' if online else 'offline'})", run_dir),
    ]
    width = max(len(label) for label, _ in files)
    lines = [f"\nfiles in {out}:"]
    lines += [f"  {label:<{width}}  {path}" for label, path in files if path is not None]
    if state.bundle_dir is not None:
        lines.append(f"serve the bundle:  lightning-nas serve {state.bundle_dir} --port 8000 [--int8]")
    if not online:
        lines.append(f"upload the W&B run later:  wandb sync {run_dir}")
    lines.append(f"demo finished in {time.perf_counter() - t0:.1f} s")
    console.write("\n".join(lines) + "\n")
    return {
        "rows": state.rows,
        "card": str(card_path),
        "onnx": str(onnx_path),
        "wandb_run": str(run_dir),
        "report": str(report_path),
        "bundle": str(state.bundle_dir) if state.bundle_dir else None,
    }


def _print_table(rows: list[dict[str, Any]], stream: TextIO | None = None) -> None:
    cols = ["stage", "test_acc", "params", "size_bytes", "macs", "latency_ms", "onnx_latency_ms"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for i, r in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)), file=stream)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=stream)
