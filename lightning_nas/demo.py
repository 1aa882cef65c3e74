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


def _stage_train(state: _DemoState) -> None:
    state.module = Classifier(DigitsCNN(width=16), lr=3e-3)
    trainer = _trainer(state)
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    _record(state, "train", state.module.net, acc)


def _stage_prune(state: _DemoState) -> None:
    """Remove half of the channels of the trained model (physically), then fine-tune (half the training epochs)."""
    from lightning_nas.callbacks import StructuredPruning

    trainer = _trainer(state, callbacks=[StructuredPruning(amount=0.5, start_epoch=0)],
                       max_epochs=max(2, state.max_epochs // 2))
    trainer.fit(state.module, datamodule=state.datamodule)
    acc = trainer.test(state.module, datamodule=state.datamodule, verbose=False)[0]["test_acc"]
    _record(state, "prune", state.module.net, acc)


STAGES = [("train", _stage_train), ("prune", _stage_prune)]


def run_demo(max_epochs: int = 8, online: bool = False, out_dir: str | Path = "nas_runs/demo",
             seed: int = 0) -> dict[str, Any]:
    """Run every stage, print the summary table, write the model card; return a dict of results."""
    from lightning.pytorch.loggers import WandbLogger

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
    _print_table(state.rows)
    print(f"\nmodel card: {card_path}\nONNX model: {onnx_path}")
    print(f"W&B run ({'online' if online else 'offline'}): {run_dir}")
    if not online:
        print(f"  upload it later with:  wandb sync {run_dir}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return {"rows": state.rows, "card": str(card_path), "onnx": str(onnx_path), "wandb_run": str(run_dir)}


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["stage", "test_acc", "params", "size_bytes", "macs", "latency_ms", "onnx_latency_ms"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for i, r in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
