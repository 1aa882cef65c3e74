"""A plain PyTorch CNN (no Lightning in it) compressed in ONE fit: distillation + pruning + QAT, then int8 ONNX.

A bigger CNN is trained first and becomes the teacher. The student then trains with ``KnowledgeDistillation``
all along, loses half its channels to ``StructuredPruning`` (after a third of the epochs), and fine-tunes
under ``QuantizationAware`` for the last two epochs; the fit ends with a real int8 model, exported to ONNX and
measured (``deploy.measure``) against the float student before compression.

    python examples/plain_pytorch_cnn.py --max-epochs 6 --out-dir nas_runs/plain_cnn
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning
from lightning_nas.data import DigitsDataModule
from lightning_nas.deploy import measure


class PlainCNN(nn.Module):
    """What a user wrote in plain PyTorch: conv-bn-relu x2, max-pool, linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Wrapped(L.LightningModule):
    """The minimal LightningModule around it."""

    def __init__(self, net: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _accuracy(model: nn.Module, dm: DigitsDataModule) -> float:
    x, y = dm.split("test").tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def main(
    max_epochs: int = 6,
    out_dir: str | Path = "nas_runs/plain_cnn",
    teacher_epochs: int | None = None,
    limit_train_batches: int | float = 1.0,
) -> dict[str, Any]:
    out = Path(out_dir)
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    kw = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
        limit_train_batches=limit_train_batches,
    )
    teacher = Wrapped(PlainCNN(32))
    L.Trainer(max_epochs=teacher_epochs or 2 * max_epochs, **kw).fit(teacher, datamodule=dm)

    student = Wrapped(PlainCNN(16))
    before = copy.deepcopy(student.net).eval()
    kd = KnowledgeDistillation(teacher.net, temperature=2.0, alpha=0.5)
    prune_epoch = max_epochs // 3  # train a little first, prune, fine-tune, then QAT for the last epochs
    prune = StructuredPruning(amount=0.5, importance="l1", start_epoch=prune_epoch)
    qat = QuantizationAware(
        start_epoch=max(prune_epoch + 1, max_epochs - 2),
        freeze_observers_after=1,
        onnx_path=str(out / "student_int8.onnx"),
        explain=False,
    )
    L.Trainer(max_epochs=max_epochs, callbacks=[kd, prune, qat], **kw).fit(student, datamodule=dm)

    x = dm.split("test").tensors[0][:64]
    rows = {
        "fp32 student, uncompressed": (measure(before, x), None),
        "pruned fp32 (after fit)": (measure(copy.deepcopy(student.net).eval(), x), _accuracy(student.net, dm)),
        "pruned int8 (QAT)": (measure(qat.int8_model, x), _accuracy(qat.int8_model, dm)),
    }
    print(
        f"teacher test acc {_accuracy(teacher.net, dm):.3f}; KD agreement per epoch "
        f"{[round(h['distill/agreement'], 3) for h in kd.history]}"
    )
    print(f"{'model':26s} {'params':>7s} {'size KB':>8s} {'torch ms':>9s} {'onnx ms':>8s} {'test acc':>8s}")
    for name, (m, acc) in rows.items():
        print(
            f"{name:26s} {m.params:7d} {m.size_bytes / 1024:8.1f} {m.latency_ms or float('nan'):9.2f} "
            f"{m.onnx_latency_ms or float('nan'):8.2f} {'' if acc is None else f'{acc:.3f}':>8s}"
        )
    return {
        "teacher": teacher,
        "student": student,
        "kd": kd,
        "prune": prune,
        "qat": qat,
        "before": before,
        "measurements": {k: v[0] for k, v in rows.items()},
        "onnx_path": out / "student_int8.onnx",
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--out-dir", default="nas_runs/plain_cnn")
    a = p.parse_args()
    main(a.max_epochs, a.out_dir)
