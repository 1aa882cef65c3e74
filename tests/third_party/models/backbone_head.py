"""Two ``backbone`` + ``head`` projects, as people write them: the step calls the two parts in turn.

``BackboneHead``: the backbone ends with its own pooling (to 2x2), the step flattens between the parts.
``BackbonePoolHead``: the backbone returns feature maps, the step pools them (to 2x2) functionally and
flattens before the head.
Neither LightningModule defines ``forward``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def _second_conv(width: int, searchable: bool) -> nn.Module:
    conv = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
    if not searchable:
        return conv
    from lightning_nas import space

    return space.LayerChoice(
        {
            "conv3": conv,
            "sep3": nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                nn.Conv2d(width, 2 * width, 1, bias=False),
            ),
        },
        label="backbone_conv2",
    )


class BackboneHead(L.LightningModule):
    def __init__(self, width: int = 16, num_classes: int = 10, lr: float = 1e-2, searchable: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _second_conv(width, searchable),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(2 * width * 4, num_classes)

    def training_step(self, batch, batch_idx):
        x, y = batch
        feats = self.backbone(x)
        logits = self.head(feats.flatten(1))
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        feats = self.backbone(x)
        logits = self.head(feats.flatten(1))
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class BackbonePoolHead(L.LightningModule):
    def __init__(self, width: int = 16, num_classes: int = 10, lr: float = 1e-2, searchable: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _second_conv(width, searchable),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * width * 4, num_classes))

    def _logits(self, x):
        feats = self.backbone(x)
        pooled = F.adaptive_avg_pool2d(feats, 2).flatten(1)
        return self.head(pooled)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self._logits(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self._logits(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
