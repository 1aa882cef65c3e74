"""``lightning-nas demo``: the pipeline on one task (digits by default, ``--task text``), offline, streamed to one
W&B run.

Stages are functions of a shared ``DemoState`` so that each capability adds its own stage; a stage may return a
short summary for its line of progress. What a stage needs to know about the data and the model comes from the
task's ``Task`` (``lightning_nas._demo_tasks``: adding a task is one ``Task`` there). What a person sees: one
line per stage (on a terminal, with a bar for the epochs), the summary table, and where the files are.
Lightning's messages, warnings, W&B's console output and anything a stage prints show only with ``verbose=True``
(``lightning-nas demo --verbose``).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_nas._demo_console import Console, EpochProgress, print_table, quiet_logs
from lightning_nas._demo_drift import attribution_drift, demo_tracker, set_reference
from lightning_nas._demo_tasks import TASKS, Task
from lightning_nas.deploy import ModelCard, export, measure
from lightning_nas.models import Classifier

__all__ = ["STAGES", "TASKS", "run_demo"]


@dataclass
class DemoState:
    out_dir: Path
    max_epochs: int
    online: bool
    datamodule: Any
    task: Task = field(default_factory=lambda: TASKS["digits"])
    module: L.LightningModule | None = None
    logger: Any = None
    card: ModelCard = field(default_factory=lambda: ModelCard("digits-demo"))
    rows: list[dict[str, Any]] = field(default_factory=list)  # summary table: one row per stage
    arch: dict[str, str] | None = None  # set by the "search" stage
    bundle_dir: Path | None = None  # set by the "bundle" stage
    console: Console | None = None  # the progress lines (None: no progress shown)
    reference: dict[str, Any] | None = None  # the float model's attributions (explain stage), for drift
    drift_rows: list[list[Any]] = field(default_factory=list)


def _trainer(state: DemoState, callbacks: list | None = None, max_epochs: int | None = None) -> L.Trainer:
    progress = [EpochProgress(state.console)] if state.console is not None and state.console.live else []
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
    rho = f", attributions rho {row['attr_rho']:.2f}" if isinstance(row.get("attr_rho"), float) else ""
    return f"test_acc {row['test_acc']:.4f}, {row['size_bytes'] / 1024:.0f} KiB{rho}"


def _record(
    state: DemoState, stage: str, model: torch.nn.Module, test_acc: float, explained: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Measure ``model`` and add its row; ``explained`` (default ``model``) is attributed against the float
    model's explanation when there is one (a differentiable stand-in for an int8 model: its fake-quant twin)."""
    m = measure(model, state.datamodule.example_input(64))
    row = {
        "stage": stage,
        "test_acc": test_acc,
        "params": m.params,
        "size_bytes": m.size_bytes,
        "macs": m.macs,
        "latency_ms": m.latency_ms,
        "onnx_latency_ms": m.onnx_latency_ms,
        "attr_rho": None,
    }
    state.rows.append(row)
    state.card.add_stage(stage, test_acc=test_acc, measurements=m)
    if state.reference is not None:
        drift = attribution_drift(state, stage, explained if explained is not None else model)
        row["attr_rho"] = drift["spearman"]
        state.card.stages[-1].update(attribution_drift=drift)
    return row


def _fit_test(state: DemoState, module: L.LightningModule, callbacks: list | None = None, **kw: Any) -> float:
    trainer = _trainer(state, callbacks, **kw)
    trainer.fit(module, datamodule=state.datamodule)
    return trainer.test(module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]


def _stage_search(state: DemoState) -> str:
    """A few epochs of DARTS over the task's LayerChoices; the found net feeds the next stages."""
    from lightning_nas import space
    from lightning_nas.callbacks import DifferentiableNAS

    net = state.task.search_space(state.datamodule)
    nas = DifferentiableNAS(mode="darts", seed=0)
    module = Classifier(net, lr=state.task.lr)
    epochs = min(state.task.search_epochs, state.max_epochs)
    _trainer(state, [nas], max_epochs=epochs).fit(module, datamodule=state.datamodule)
    state.arch = nas.export()
    found = space.freeze(net, state.arch)
    state.module = Classifier(found, lr=state.task.lr)  # later stages train and compress the found architecture
    acc = _trainer(state).test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    row = _record(state, "search", found, acc)
    state.card.stages[-1].update(arch=state.arch, reasons=nas.reasons(), space_size=space.size(net))
    return f"DARTS chose {', '.join(f'{k}={v}' for k, v in state.arch.items())}; {_row_summary(row)}"


def _stage_train(state: DemoState) -> str:
    if state.module is None:  # no search stage ran: the task's reference model
        state.module = Classifier(state.task.model(state.datamodule), lr=state.task.lr)
    acc = _fit_test(state, state.module)
    return _row_summary(_record(state, "train", state.module.net, acc))


def _stage_bundle(state: DemoState) -> str:
    """Bundle the final net (ONNX float + int8, TorchScript, card, drift profile); the end of the demo says how to
    serve it."""
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


def _stage_multitrial(state: DemoState) -> str:
    """Multi-trial hyperparameter search (TPE, 4 short trials) of lr and weight decay for the current network;
    the train stage then trains it with the best values. The trials table goes to the demo's W&B run."""
    from lightning_nas.search import run

    lo, hi = state.task.lr_range
    template = state.module.net if state.module is not None else state.task.model(state.datamodule)

    def build(trial):
        return Classifier(
            copy.deepcopy(template),
            lr=trial.loguniform("lr", lo, hi),
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
    demo_tracker(state).log_table(
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


def _stage_explain(state: DemoState) -> str:
    """Two more epochs of the current model with the explain callbacks attached (attributions, AOPC, dynamics,
    decision paths where the inputs are image-like); its attributions become the reference of later stages."""
    from lightning_nas.callbacks import ArchitectureView, AttributionMonitor, DecisionPaths, TrainingDynamics

    task = state.task
    cbs = [
        AttributionMonitor(n_samples=20, **task.explain_kwargs(state.datamodule)),
        TrainingDynamics(every_n_steps=5, histogram_every_n_steps=20),
        ArchitectureView(),
    ]
    if task.paths:
        cbs.insert(2, DecisionPaths(n_samples=50))
    acc = _fit_test(state, state.module, cbs, max_epochs=2)
    row = _record(state, "explain", state.module.net, acc)
    set_reference(state, state.module.net)
    kind = "token attributions" if task.attribution == "tokens" else "attributions"
    return f"{kind}, dynamics{', decision paths' if task.paths else ''}, architecture view; " + _row_summary(row)


def _test_acc(model: torch.nn.Module, state: DemoState) -> float:
    x, y = state.datamodule.split("test").tensors
    with torch.no_grad():
        return float(
            torch.cat([model.eval()(x[i : i + 1024]).argmax(1) for i in range(0, len(x), 1024)]).eq(y).float().mean()
        )


def _stage_distill(state: DemoState) -> str:
    """The task's plain student (no searched blocks) learns from the trained model (KD); it becomes the model of
    later stages."""
    from lightning_nas.callbacks import KnowledgeDistillation

    teacher = state.module.net
    student = Classifier(state.task.student(state.datamodule), lr=state.task.student_lr)
    kd = KnowledgeDistillation(teacher, temperature=4.0, alpha=0.7)
    epochs = max(1, round(state.task.distill_factor * state.max_epochs))
    acc = _fit_test(state, student, [kd], max_epochs=epochs)
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
    return f"plain student{agreement}; {_row_summary(row)}"


def _qat_fit(
    state: DemoState, module: L.LightningModule, ignore: tuple[str, ...] | None = None, onnx_path: str | None = None
) -> Any:
    """Two epochs of QAT fine-tuning of ``module`` (its ``lr`` scaled by the task's ``quant_lr_scale``)."""
    from lightning_nas.callbacks import QuantizationAware

    ignore = state.task.quant_ignore if ignore is None else ignore
    qat = QuantizationAware(freeze_bn_after=0, ignore=list(ignore), onnx_path=onnx_path)
    lr = module.lr
    module.lr = lr * state.task.quant_lr_scale
    try:
        _trainer(state, [qat], max_epochs=2).fit(module, datamodule=state.datamodule)
    finally:
        module.lr = lr
    return qat


def _stage_quantize(state: DemoState) -> str:
    """Two epochs of QAT fine-tuning of the current model, then the real int8 model (torch) and its ONNX file."""
    from lightning_nas.compress.quantize import allow_int8_kernels

    qat = _qat_fit(state, state.module, onnx_path=str(state.out_dir / "model_int8.onnx"))
    with allow_int8_kernels():  # the demo's trainers are deterministic; int8 kernels need the flag lifted
        # the int8 model has no gradients: its attributions are its fake-quant twin's (the same int8 arithmetic)
        row = _record(state, "quantize", qat.int8_model, _test_acc(qat.int8_model, state), explained=qat.qat_model)
    state.card.stages[-1].update(
        onnx_int8=str(state.out_dir / "model_int8.onnx"),
        backend="x86",
        size_ratio=qat.measurements.get("quant/size_ratio"),
        speedup=qat.measurements.get("quant/speedup"),
        float_layers=list(state.task.quant_ignore),
        qat_lr_scale=state.task.quant_lr_scale,
    )
    return f"int8 after 2 QAT epochs; {_row_summary(row)}"


def _stage_prune(state: DemoState) -> str:
    """Remove half of the channels of the trained model (physically), then fine-tune (half the training epochs)."""
    from lightning_nas.callbacks import StructuredPruning

    cbs = [StructuredPruning(amount=0.5, start_epoch=0)]
    acc = _fit_test(state, state.module, cbs, max_epochs=max(2, state.max_epochs // 2))
    return "half of the channels removed; " + _row_summary(_record(state, "prune", state.module.net, acc))


def _stage_lowrank(state: DemoState) -> str:
    """Factorize the current model's Conv/Linear layers by truncated SVD (each pair of factors at most half the
    layer's parameters), fine-tune one epoch."""
    from lightning_nas.callbacks import LowRankFactorization

    lr = LowRankFactorization(energy=None, budget=0.5, start_epoch=0)
    acc = _fit_test(state, state.module, [lr], max_epochs=1)
    done = sum(r.rank is not None for r in lr.report)
    row = _record(state, "lowrank", state.module.net, acc)
    state.card.stages[-1].update(ranks=dict(lr.ranks), budget=0.5)
    return f"{done} of {len(lr.report)} layers factorized; {_row_summary(row)}"


# Every stage a task may list (``Task.stages``), by name; each capability contributes one.
STAGES = {
    "search": _stage_search,
    "multitrial": _stage_multitrial,
    "train": _stage_train,
    "explain": _stage_explain,
    "distill": _stage_distill,
    "prune": _stage_prune,
    "lowrank": _stage_lowrank,
    "quantize": _stage_quantize,
    "bundle": _stage_bundle,
}


def run_demo(
    max_epochs: int | None = None,
    online: bool = False,
    out_dir: str | Path = "nas_runs/demo",
    seed: int = 0,
    verbose: bool = False,
    task: str = "digits",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every stage of ``task`` (``TASKS``), print one line per stage, the summary table and where the files
    are; write the model card; return a dict of results. ``max_epochs`` defaults to the task's (digits 8, text 3).
    ``verbose`` also shows Lightning's messages, warnings and W&B's output. ``threads``: torch's intra-op threads
    for the run (default: the task's; torch's own count when the task has none), restored afterwards."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {task!r}")
    spec = TASKS[task]
    threads = threads or spec.threads
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(spec, max_epochs, online, out_dir, seed, verbose)
    finally:
        torch.set_num_threads(before)


def _run(spec: Task, max_epochs: int | None, online: bool, out_dir: str | Path, seed: int, verbose: bool) -> dict:
    """``run_demo``'s body, under the run's thread count."""
    console = Console(sys.stdout, verbose)
    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    with quiet_logs(verbose):
        from lightning_nas.tracking import FallbackWandbLogger as WandbLogger

        L.seed_everything(seed, workers=True, verbose=False)
        out.mkdir(parents=True, exist_ok=True)
        if not online:
            os.environ.setdefault("WANDB_MODE", "offline")
        logger = WandbLogger(project="lightning-nas-demo", save_dir=str(out), offline=not online)
        datamodule = spec.datamodule(seed)
        datamodule.setup()
        state = DemoState(
            out_dir=out,
            max_epochs=max_epochs or spec.max_epochs,
            online=online,
            datamodule=datamodule,
            task=spec,
            logger=logger,
            console=console,
            card=ModelCard(f"{spec.name}-demo"),
        )
        state.card.input_spec = spec.input_spec(datamodule)
        for i, name in enumerate(spec.stages, 1):
            console.start(i, len(spec.stages), name)
            summary = STAGES[name](state)
            console.end(summary)
        model = state.module.net.eval()
        state.card.set_model(model)
        state.card.metrics["test_acc"] = state.rows[-1]["test_acc"]
        state.card.measurements = {k: v for k, v in state.rows[-1].items() if k != "stage"}
        onnx_path = export(model, datamodule.example_input(1), out / "model.onnx", "onnx")
        card_path = state.card.save(out / "model_card.json")
        run_dir = Path(logger.experiment.dir).parent
        import wandb

        wandb.finish()
        from lightning_nas.report import build_report

        report_path = build_report(run_dir, out / "report.html", title=f"lightning-nas demo ({spec.name})")
    console.write("\n")
    print_table(state.rows, console.stream)
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
        "task": spec.name,
        "rows": state.rows,
        "card": str(card_path),
        "onnx": str(onnx_path),
        "wandb_run": str(run_dir),
        "report": str(report_path),
        "bundle": str(state.bundle_dir) if state.bundle_dir else None,
        "arch": state.arch,
        "seconds": time.perf_counter() - t0,
    }
