"""A project whose Dataset returns dicts: batches are ``{"image": (B, 1, 8, 8), "label": (B,)}``.

The model is an ``nn.Sequential`` CNN in ``self.model``, called on ``batch["image"]`` in the step.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def make_cnn(width: int = 16, num_classes: int = 10, searchable: bool = False) -> nn.Sequential:
    second = nn.Conv2d(width, 2 * width, 3, padding=1)
    if searchable:
        from lightning_nas import space

        second = space.LayerChoice({"conv3": second, "conv5": nn.Conv2d(width, 2 * width, 5, padding=2)}, label="conv2")
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        second,
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, num_classes),
    )


class DictBatchClassifier(L.LightningModule):
    def __init__(self, width: int = 16, lr: float = 1e-2, searchable: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = make_cnn(width, searchable=searchable)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self.model(batch["image"])
        self.log("val_loss", F.cross_entropy(logits, batch["label"]))
        self.log("val_acc", (logits.argmax(-1) == batch["label"]).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
