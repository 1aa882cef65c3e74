"""Small reference models for the demo, tests and benchmarks (digits-sized, and a text CNN for WordNet glosses).

``Classifier`` wraps any ``nn.Module`` in an ordinary LightningModule (cross-entropy; logs ``train_loss``,
``val_loss``, ``val_acc``, ``test_acc``). It is written the way a user would write one: no lightning_nas
hooks in it, so callbacks are tested against plain Lightning code. Batches are ``(x, y)`` whatever ``x`` is:
images for ``DigitsCNN``, int64 token ids for ``TextCNN``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_nas._validate import check_int, check_range


class DigitsCNN(nn.Module):
    """Two conv blocks and a linear head for ``1x8x8`` digits.

    Args:
        width: channels of the first conv; the second has ``2 * width``.
        num_classes: output logits.
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        check_int("width", width, 1)
        check_int("num_classes", num_classes, 2)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TextCNN(nn.Module):
    """A small CNN over word embeddings for sentence classification (Kim 2014, two stacked convs).

    ``ids (B, T)`` int64 -> ``embedding`` ``(B, T, E)`` -> transposed to ``(B, E, T)`` -> ``features``: two
    ``Conv1d`` + BatchNorm + ReLU blocks (the first of width ``kernel_size``, the second of width 3) ->
    max over time -> dropout -> ``classifier``. Padding (id ``padding_idx``) embeds to zero.

    Args:
        vocab_size: rows of the embedding (``TextDataModule.vocab_size``).
        num_classes: output logits.
        embed_dim: embedding size.
        channels: channels of both convs.
        kernel_size: width of the first conv, odd (the sequence length is kept).
        dropout: dropout before the classifier.
        padding_idx: the padding token id.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 26,
        embed_dim: int = 64,
        channels: int = 128,
        kernel_size: int = 3,
        dropout: float = 0.25,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 2)
        check_int("num_classes", num_classes, 2)
        check_int("embed_dim", embed_dim, 1)
        check_int("channels", channels, 1)
        check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd (the sequence length is kept), got {kernel_size}")
        check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.features = nn.Sequential(
            *text_conv_block(embed_dim, channels, kernel_size),
            *text_conv_block(channels, channels, 3),
        )
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embedding(ids).transpose(1, 2)
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(h)), 1)))


def text_conv_block(cin: int, cout: int, kernel_size: int) -> nn.Sequential:
    """``Conv1d(cin, cout, kernel_size, padding=kernel_size // 2)`` + BatchNorm1d + ReLU (length kept)."""
    return nn.Sequential(
        nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()
    )


class Classifier(L.LightningModule):
    """An ordinary LightningModule around ``net`` (Adam, cross-entropy, accuracy on val and test)."""

    def __init__(self, net: nn.Module | None = None, lr: float = 3e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        check_range("lr", lr, 0.0, 10.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0, 1.0)
        self.net = net if net is not None else DigitsCNN()
        self.lr, self.weight_decay = lr, weight_decay
        self.save_hyperparameters(ignore=["net"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, prefix: str):
        x, y = batch
        logits = self(x)
        self.log(f"{prefix}_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log(f"{prefix}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def train_plain(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 6, lr: float = 3e-3, batch_size: int = 64
) -> nn.Module:
    """Train ``net`` with a plain Adam/cross-entropy loop (no Lightning; shuffled by torch's global RNG) and
    return it in eval mode: a quick trained model for tests and benchmarks."""
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block (He et al. 2016), as torchvision writes it."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet-18/34 layout (BasicBlocks, 7x7 stem, max-pool, four stages, average pool, ``fc``) at
    any base ``width`` (64 is ResNet-18 itself, 11.2M parameters with 10 classes). Benchmarks use it to measure
    costs at the scale users train at; torchvision itself does not import beside this machine's CPU torch."""

    def __init__(
        self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_int("width", width, 1)
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            stages.append(
                nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if i and j == 0 else 1) for j in range(n)])
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels)


def resnet34(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes, width, in_channels)
