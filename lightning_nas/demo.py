"""``lightning-nas demo``: the pipeline on digits, offline, streamed to one W&B run.

Stages are functions of a shared ``_DemoState`` so that each capability adds its own stage.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

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


def _trainer(state: _DemoState, callbacks: list | None = None, max_epochs: int | None = None) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs or state.max_epochs, logger=state.logger, callbacks=callbacks or [],
                     accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(state.out_dir), enable_checkpointing=False, deterministic=True)


def _record(state: _DemoState, stage: str, model: torch.nn.Module, test_acc: float) -> dict[str, Any]:
    m = measure(model, state.datamodule.example_input(64))
    row = {"stage": stage, "test_acc": test_acc, "params": m.params, "size_bytes": m.size_bytes,
           "macs": m.macs, "latency_ms": m.latency_ms, "onnx_latency_ms": m.onnx_latency_ms}
    state.rows.append(row)
    state.card.add_stage(stage, test_acc=test_acc, measurements=m)
    return row


def _stage_search(state: _DemoState) -> None:
    """A few epochs of DARTS over two LayerChoices put into DigitsCNN; the found net feeds the next stages."""
    from torch import nn

    from lightning_nas import space
    from lightning_nas.callbacks import DifferentiableNAS

    def block(label: str, c: int) -> space.LayerChoice:
        conv = lambda k: nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False),  # noqa: E731
                                       nn.BatchNorm2d(c), nn.ReLU())
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
    _record(state, "search", found, acc)
    state.card.stages[-1].update(arch=state.arch, reasons=nas.reasons(), space_size=space.size(net))


def _stage_train(state: _DemoState) -> None:
    if state.module is None:  # no search stage ran: the reference CNN
        state.module = Classifier(DigitsCNN(width=16), lr=3e-3)
    trainer = _trainer(state)
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    _record(state, "train", state.module.net, acc)


def _stage_bundle(state: _DemoState) -> None:
    """Bundle the final net (ONNX float + int8, TorchScript, card, drift profile); print how to serve it."""
    import copy

    from lightning_nas.deploy import bundle

    net = state.module.net.eval()
    card = copy.deepcopy(state.card)
    card.metrics["test_acc"] = state.rows[-1]["test_acc"] if state.rows else None
    int8 = state.out_dir / "model_int8.onnx"  # the QAT stage's int8 model; else post-training quantization
    out = bundle(net, state.datamodule.example_input(64), state.out_dir / "bundle",
                 int8=int8 if int8.exists() else True, card=card,
                 reference_data=state.datamodule.split("train").tensors[0], metrics=dict(card.metrics),
                 overwrite=True)
    print(f"\nbundle: {out}\n  serve it with:  lightning-nas serve {out} --port 8000 [--int8]\n"
          "  then POST /predict {\"inputs\": [[[[...8 values...] x 8]]]}, GET /health, /card, /drift")


def _stage_multitrial(state: _DemoState) -> None:
    """Multi-trial hyperparameter search (TPE, 4 short trials) of lr and weight decay for the current network;
    the train stage then trains it with the best values. The trials table goes to the demo's W&B run."""
    import copy

    from lightning_nas.search import run
    from lightning_nas.tracking import Tracker

    template = state.module.net if state.module is not None else DigitsCNN(width=16)

    def build(trial):
        return Classifier(copy.deepcopy(template), lr=trial.loguniform("lr", 1e-3, 1e-2),
                          weight_decay=trial.choice("weight_decay", [0.0, 1e-4, 1e-3]))

    res = run(build, state.datamodule, objectives={"val_acc": "maximize"}, n_trials=4, strategy="tpe", seed=0,
              out_dir=state.out_dir / "multitrial", trainer_kwargs={"max_epochs": 1, "deterministic": True})
    Tracker(loggers=[state.logger], files_dir=state.out_dir / "multitrial" / "demo").log_table(
        "search/trials", ["number", "lr", "weight_decay", "val_acc"],
        [[t.number, t.params["lr"], t.params["weight_decay"], t.value] for t in res.study.trials
         if t.value is not None], step=0)
    best = res.best_params
    state.module = Classifier(copy.deepcopy(template), lr=best["lr"], weight_decay=best["weight_decay"])
    state.card.metrics["multitrial_best"] = {"params": best, "val_acc": res.best_values["val_acc"]}


def _stage_explain(state: _DemoState) -> None:
    """Two more epochs of the current model with the explain callbacks attached (maps, AOPC, dynamics, paths)."""
    from lightning_nas.callbacks import ArchitectureView, AttributionMonitor, DecisionPaths, TrainingDynamics

    cbs = [AttributionMonitor(n_samples=20), TrainingDynamics(every_n_steps=5, histogram_every_n_steps=20),
           DecisionPaths(n_samples=50), ArchitectureView()]
    trainer = _trainer(state, callbacks=cbs, max_epochs=2)
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    _record(state, "explain", state.module.net, acc)



def _test_acc(model: torch.nn.Module, state: _DemoState) -> float:
    x, y = state.datamodule.split("test").tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def _stage_distill(state: _DemoState) -> None:
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
    state.card.stages[-1].update(teacher_params=sum(p.numel() for p in teacher.parameters()),
                                 temperature=4.0, alpha=0.7, agreement=row["agreement"])


# The quantize stage keeps the first conv block float: on the pruned net (8 channels from one input channel) ONNX
# Runtime's int8 QLinearConv is several times slower than its fp32 Conv and made the int8 model slower than the
# fp32 one; the other layers run int8. It fine-tunes at a tenth of the module's learning rate with BatchNorm
# statistics frozen (torch's fused Conv+BN QAT modules otherwise knocked the pruned net down by ~20 points in
# the first epoch). Measured: BENCHMARKS.md, "make demo's quantize stage" (benchmarks/qat_demo.py).
QUANT_IGNORE = ("features.0", "features.1", "features.2")
QUANT_LR_SCALE = 0.1


def _qat_fit(state: _DemoState, module: L.LightningModule, ignore: tuple[str, ...] = QUANT_IGNORE,
             onnx_path: str | None = None) -> Any:
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


def _stage_quantize(state: _DemoState) -> None:
    """Two epochs of QAT fine-tuning of the current model, then the real int8 model (torch) and its ONNX file."""
    from lightning_nas.compress.quantize import allow_int8_kernels

    qat = _qat_fit(state, state.module, onnx_path=str(state.out_dir / "model_int8.onnx"))
    with allow_int8_kernels():  # the demo's trainers are deterministic; int8 kernels need the flag lifted
        _record(state, "quantize", qat.int8_model, _test_acc(qat.int8_model, state))
    state.card.stages[-1].update(onnx_int8=str(state.out_dir / "model_int8.onnx"), backend="x86",
                                 size_ratio=qat.measurements.get("quant/size_ratio"),
                                 speedup=qat.measurements.get("quant/speedup"), float_layers=list(QUANT_IGNORE),
                                 qat_lr_scale=QUANT_LR_SCALE)




def _stage_prune(state: _DemoState) -> None:
    """Remove half of the channels of the trained model (physically), then fine-tune (half the training epochs)."""
    from lightning_nas.callbacks import StructuredPruning

    trainer = _trainer(state, callbacks=[StructuredPruning(amount=0.5, start_epoch=0)],
                       max_epochs=max(2, state.max_epochs // 2))
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    _record(state, "prune", state.module.net, acc)



# The pipeline, in order: each capability contributes one stage.
STAGES = [("search", _stage_search), ("multitrial", _stage_multitrial), ("train", _stage_train),
          ("explain", _stage_explain), ("distill", _stage_distill), ("prune", _stage_prune),
          ("quantize", _stage_quantize), ("bundle", _stage_bundle)]


def run_demo(max_epochs: int = 8, online: bool = False, out_dir: str | Path = "nas_runs/demo",
             seed: int = 0) -> dict[str, Any]:
    """Run every stage, print the summary table, write the model card; return a dict of results."""
    from lightning_nas.tracking import FallbackWandbLogger as WandbLogger

    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not online:
        os.environ.setdefault("WANDB_MODE", "offline")
    logger = WandbLogger(project="lightning-nas-demo", save_dir=str(out), offline=not online)
    state = _DemoState(out_dir=out, max_epochs=max_epochs, online=online,
                       datamodule=DigitsDataModule(batch_size=64, seed=seed), logger=logger)
    state.card.input_spec = {"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8],
                             "range": [0.0, 1.0], "normalisation": "pixel / 16"}
    for _name, stage in STAGES:
        stage(state)
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
    _print_table(state.rows)
    print(f"\nmodel card: {card_path}\nONNX model: {onnx_path}")
    print(f"HTML report: {report_path}")
    print(f"W&B run ({'online' if online else 'offline'}): {run_dir}")
    if not online:
        print(f"  upload it later with:  wandb sync {run_dir}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return {"rows": state.rows, "card": str(card_path), "onnx": str(onnx_path), "wandb_run": str(run_dir),
            "report": str(report_path)}


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["stage", "test_acc", "params", "size_bytes", "macs", "latency_ms", "onnx_latency_ms"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for i, r in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
