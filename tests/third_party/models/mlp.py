"""An MLP whose layers sit directly on the LightningModule (no ``self.model``). The images are flattened
in the step, then ``self(x)``. One ``nn.ReLU`` module is reused after both hidden layers (widths differ)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class FlatMLP(L.LightningModule):
    def __init__(
        self,
        in_features: int = 64,
        hidden: int = 128,
        num_classes: int = 10,
        lr: float = 3e-3,
        searchable: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(in_features, hidden)
        if searchable:
            from lightning_nas import space

            self.fc2 = space.LayerChoice(
                {
                    "linear": nn.Linear(hidden, hidden // 2),
                    "bottleneck": nn.Sequential(nn.Linear(hidden, 16), nn.Linear(16, hidden // 2)),
                },
                label="fc2",
            )
        else:
            self.fc2 = nn.Linear(hidden, hidden // 2)
        self.fc3 = nn.Linear(hidden // 2, num_classes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x = self.relu(self.fc1(x))
        x = self.dropout(self.relu(self.fc2(x)))
        return self.fc3(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
