"""The README's quick start: search one decision inside your own model, then compress the result.

python examples/quickstart.py
"""

import lightning as L
from torch import nn

from lightning_nas import space
from lightning_nas.callbacks import (
    AttributionMonitor,
    DifferentiableNAS,
    KnowledgeDistillation,
    QuantizationAware,
    StructuredPruning,
)
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier  # stands for your own LightningModule, unchanged
from lightning_nas.tracking import FallbackWandbLogger


class Net(nn.Module):  # your model, with one decision marked in it
    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.block = space.LayerChoice(
            {"conv3": nn.Conv2d(c, c, 3, padding=1), "conv5": nn.Conv2d(c, c, 5, padding=2), "skip": nn.Identity()},
            label="block1",
        )
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def main(max_epochs: int = 6, out_dir: str = "nas_runs/quickstart") -> dict:
    data = DigitsDataModule()
    # 1. search, with attributions streamed to W&B (offline here: `wandb sync` it later)
    nas = DifferentiableNAS(mode="darts")
    trainer = L.Trainer(
        max_epochs=max_epochs,
        default_root_dir=out_dir,
        enable_progress_bar=False,
        logger=FallbackWandbLogger(project="digits", save_dir=out_dir, offline=True),
        callbacks=[nas, AttributionMonitor()],
    )
    module = Classifier(Net())
    trainer.fit(module, datamodule=data)
    arch = nas.export()  # e.g. {"block1": "conv5"}
    print(arch, nas.reasons())  # and why each choice won
    teacher = space.freeze(module.net, arch)  # a plain nn.Module, no search machinery left
    # 2. compress the found architecture: distil into a fresh copy, prune half the channels, then QAT
    student = Classifier(space.freeze(Net(), arch))
    qat = QuantizationAware(start_epoch=max_epochs - 1)
    L.Trainer(
        max_epochs=max_epochs,
        default_root_dir=out_dir,
        enable_progress_bar=False,
        logger=False,
        callbacks=[KnowledgeDistillation(teacher), StructuredPruning(amount=0.5, start_epoch=1), qat],
    ).fit(student, datamodule=data)
    return {"arch": arch, "int8": qat.int8_model}


if __name__ == "__main__":
    main()
