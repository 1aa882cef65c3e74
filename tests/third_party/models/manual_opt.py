"""Manual optimization: the step zeroes, backpropagates and steps itself, and steps its scheduler by hand
at the end of each epoch (``automatic_optimization = False``)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10, searchable: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        if searchable:
            from lightning_nas import space

            self.conv2 = space.LayerChoice(
                {"conv3": nn.Conv2d(width, 2 * width, 3, padding=1), "conv1": nn.Conv2d(width, 2 * width, 1)},
                label="conv2",
            )
        else:
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(F.max_pool2d(x, 2))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


class ManualOptClassifier(L.LightningModule):
    def __init__(self, width: int = 16, lr: float = 1e-2, searchable: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = SmallCNN(width, searchable=searchable)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        sch = self.lr_schedulers()
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        if self.trainer.is_last_batch:
            sch.step()
        self.log("train_loss", loss, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]
