"""Lightning's own ``demos.boring_classes.DemoModel``, unmodified, with QAT, distillation and training dynamics.

``DemoModel`` is a single ``Linear(32, 10)`` whose ``training_step`` returns ``output.sum()`` on random
vectors: nothing to prune, but ``QuantizationAware`` turns its Linear into a real int8 layer,
``KnowledgeDistillation`` pulls its outputs toward a wider teacher (the KD loss is mixed into whatever loss the
module returns), and ``TrainingDynamics`` records gradient norms and update ratios.

    python examples/boring_model.py --max-epochs 3 --out-dir nas_runs/boring
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, TrainingDynamics


def main(max_epochs: int = 3, out_dir: str | Path = "nas_runs/boring") -> dict[str, Any]:
    out = Path(out_dir)
    L.seed_everything(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()  # same inputs and outputs
    model = DemoModel()
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5)
    qat = QuantizationAware(start_epoch=max(0, max_epochs - 2), freeze_observers_after=1, explain=False)
    dyn = TrainingDynamics(every_n_steps=4, histogram_every_n_steps=0)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=CSVLogger(out, name="csv"),
        log_every_n_steps=4,
        enable_checkpointing=False,
        default_root_dir=str(out),
        callbacks=[kd, qat, dyn],
    )
    trainer.fit(model, DataLoader(RandomDataset(32, 256), batch_size=16))

    scalars = [json.loads(line) for line in next(out.rglob("nas_files/scalars.jsonl")).read_text().splitlines()]
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:  # KD logs through the module's logger
        kd_losses = [float(r["distill/kd_loss"]) for r in csv.DictReader(f) if r.get("distill/kd_loss")]
    x = torch.randn(8, 32)
    with torch.no_grad():
        err = float((qat.int8_model(x) - model.eval().l1(x)).abs().max())  # int8_model is the quantized l1
    print(f"KD loss: first {kd_losses[0]:.4f}, last {kd_losses[-1]:.4f} ({len(kd_losses)} logged steps)")
    print(f"int8 model: {[type(m).__name__ for m in qat.int8_model.modules()][1:]}; max |int8 - fp32| = {err:.4f}")
    grad_norms = [round(s["dynamics/grad_norm_total"], 2) for s in scalars if "dynamics/grad_norm_total" in s]
    print(f"dynamics: grad norm {grad_norms}")
    return {"model": model, "kd": kd, "qat": qat, "dynamics": dyn, "scalars": scalars, "kd_losses": kd_losses}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--out-dir", default="nas_runs/boring")
    a = p.parse_args()
    main(a.max_epochs, a.out_dir)
