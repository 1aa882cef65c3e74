"""Lightning's demo MNIST ``Net`` (28x28 in, log-probabilities out) reused on 8x8 digits.

The author keeps ``Net`` as Lightning ships it and adapts the data in the step: upsample to 28x28, normalise
with the MNIST statistics, then ``self.net(x)``. No ``forward`` on the LightningModule.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.demos.boring_classes import Net
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def to_mnist(x: torch.Tensor) -> torch.Tensor:
    """8x8 digits in [0, 1] -> what Net was designed for: 28x28, MNIST-normalised."""
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return (x - MNIST_MEAN) / MNIST_STD


class DigitsOnMNISTNet(L.LightningModule):
    def __init__(self, net: nn.Module | None = None, lr: float = 1e-3) -> None:
        super().__init__()
        self.net = net if net is not None else Net()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = to_mnist(x)
        logp = self.net(x)
        loss = F.nll_loss(logp, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = to_mnist(x)
        logp = self.net(x)
        self.log("val_loss", F.nll_loss(logp, y))
        self.log("val_acc", (logp.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def searchable_net() -> Net:
    """The author's search: Lightning's Net with its second conv made a choice (same output size either way)."""
    from lightning_nas import space

    net = Net()
    net.conv2 = space.LayerChoice(
        {"conv3": nn.Conv2d(32, 64, 3, 1), "conv5": nn.Conv2d(32, 64, 5, 1, padding=1)}, label="conv2"
    )
    return net
