"""Small reference models for the demo, tests and benchmarks (digits-sized).

``Classifier`` wraps any ``nn.Module`` in an ordinary LightningModule (cross-entropy; logs ``train_loss``,
``val_loss``, ``val_acc``, ``test_acc``). It is written the way a user would write one: no lightning_nas
hooks in it, so callbacks are tested against plain Lightning code. Batches are ``(x, y)`` whatever ``x`` is:
images for ``DigitsCNN``, log-mel spectrograms for ``AudioCNN``, int64 token ids for ``TextCNN``.
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

    Examples:
        >>> import torch
        >>> from lightning_nas.models import DigitsCNN
        >>> DigitsCNN(width=8)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
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


def _conv_block(cin: int, cout: int, kernel: tuple[int, int]) -> list[nn.Module]:
    """Conv ("same" padding, no bias) + BatchNorm + ReLU."""
    return [
        nn.Conv2d(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class AudioCNN(nn.Module):
    """A keyword-spotting CNN over ``1 x mels x frames`` log-mel spectrograms (e.g. ``SpokenDigitsDataModule``):
    three conv blocks (widths ``w``, ``2w``, ``4w``; 2x2 max-pooling after the first two), global max pooling
    and a linear head, as in the small-footprint KWS CNNs practitioners start from (Sainath & Parada 2015).

    Args:
        width: channels of the first conv block.
        num_classes: output logits.
        kernels: ``(frequency, time)`` kernel of the second and third conv blocks (odd sizes); the first block's
            is 3x3. ``AUDIO_KERNELS`` names the shapes ``audio_search_space`` chooses between.
    """

    def __init__(
        self,
        width: int = 16,
        num_classes: int = 10,
        kernels: tuple[tuple[int, int], tuple[int, int]] = ((3, 3), (3, 3)),
    ) -> None:
        super().__init__()
        check_int("width", width, 1)
        check_int("num_classes", num_classes, 2)
        if len(kernels) != 2 or any(len(k) != 2 or min(k) < 1 or k[0] % 2 == 0 or k[1] % 2 == 0 for k in kernels):
            raise ValueError(f"`kernels` must be two (frequency, time) pairs of odd sizes, got {kernels!r}")
        w = width
        self.features = nn.Sequential(
            *_conv_block(1, w, (3, 3)),
            nn.MaxPool2d(2),
            *_conv_block(w, 2 * w, (kernels[0][0], kernels[0][1])),
            nn.MaxPool2d(2),
            *_conv_block(2 * w, 4 * w, (kernels[1][0], kernels[1][1])),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)  # a keyword is short: the strongest response anywhere, not the mean
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


#: the kernel shapes (frequency x time) ``audio_search_space`` chooses between: square, tall (a wider band of
#: frequencies per step, as in KWS CNNs that convolve across frequency), wide (more time context per step)
AUDIO_KERNELS: dict[str, tuple[int, int]] = {"3x3": (3, 3), "5x5": (5, 5), "tall7x3": (7, 3), "wide3x7": (3, 7)}
#: layers of ``AudioCNN`` that QAT keeps float: none. Measured (BENCHMARKS.md, "Keyword spotting on spoken digits",
#: width 8, batch 64): every layer int8 runs 8.2 ms in torch against 11.4 ms with the first conv block float (the
#: digits demo's choice), at the same accuracy and a smaller file; in ONNX Runtime neither int8 model beats the float
#: one at this width (16.2 and 13.2 ms against 12.0 ms).
AUDIO_QUANT_IGNORE: tuple[str, ...] = ()


def audio_search_space(width: int = 16, num_classes: int = 10, label: str = "kernel") -> AudioCNN:
    """``AudioCNN`` whose second and third conv blocks are one tied ``space.LayerChoice`` (``label``) over the
    kernel shapes of ``AUDIO_KERNELS``: ``space.freeze(net, {label: "tall7x3"})`` equals
    ``AudioCNN(width, kernels=((7, 3), (7, 3)))`` (the chosen blocks nested one level deeper)."""
    from lightning_nas import space

    net = AudioCNN(width, num_classes)
    f, w = net.features, width

    def choice(cin: int, cout: int) -> space.LayerChoice:
        return space.LayerChoice(
            {name: nn.Sequential(*_conv_block(cin, cout, k)) for name, k in AUDIO_KERNELS.items()}, label=label
        )

    net.features = nn.Sequential(*list(f)[:4], choice(w, 2 * w), f[7], choice(2 * w, 4 * w))
    return net


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
    """An ordinary LightningModule around ``net`` (Adam, cross-entropy, accuracy on val and test).

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> module = Classifier(DigitsCNN(width=4), lr=1e-2)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(module, datamodule=DigitsDataModule())
        >>> sorted(trainer.callback_metrics)
        ['train_loss', 'val_acc', 'val_loss']
    """

    def __init__(self, net: nn.Module | None = None, lr: float = 3e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        check_range("lr", lr, 0.0, 10.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0, 1.0)
        self.net = net if net is not None else DigitsCNN()
        self.lr, self.weight_decay = lr, weight_decay
        self.save_hyperparameters(ignore=["net"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{prefix}_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log(f"{prefix}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def train_plain(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 6, lr: float = 3e-3, batch_size: int = 64
) -> nn.Module:
    """Train ``net`` with a plain Adam/cross-entropy loop (no Lightning; shuffled by torch's global RNG) and
    return it in eval mode: a quick trained model for tests and benchmarks.

    Examples:
        >>> import torch
        >>> from lightning_nas.data import load_digits_arrays
        >>> from lightning_nas.models import DigitsCNN, train_plain
        >>> x, y = load_digits_arrays()
        >>> x, y = torch.as_tensor(x[:256]), torch.as_tensor(y[:256])
        >>> net = train_plain(DigitsCNN(width=8), x, y, epochs=2)  # a plain PyTorch loop, no Lightning
        >>> net(x[:4]).shape
        torch.Size([4, 10])
    """
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


class Bottleneck(nn.Module):
    """ResNet's 1x1-3x3-1x1 bottleneck block (expansion 4, stride on the 3x3), as torchvision writes it."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet-18/34/50 layout (BasicBlocks or Bottlenecks, 7x7 stem, max-pool, four stages, average
    pool, ``fc``) at any base ``width`` (64 is ResNet-18 itself, 11.2M parameters with 10 classes). Benchmarks use
    it to measure costs at the scale users train at; torchvision itself does not import beside this machine's CPU
    torch."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        check_int("width", width, 1)
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, n in enumerate(layers):
            w = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if i and j == 0 else 1
                blocks.append(Bottleneck(cin, w, stride) if bottleneck else BasicBlock(cin, w, stride))
                cin = w * Bottleneck.expansion if bottleneck else w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-18: 2, 2, 2, 2 ``BasicBlock`` per stage, stage widths ``width * (1, 2, 4, 8)``.

    Examples:
        >>> import torch
        >>> from lightning_nas.models import resnet18
        >>> resnet18(num_classes=10, width=8, in_channels=1)(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels)


def resnet34(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-34: 3, 4, 6, 3 ``BasicBlock`` per stage, stage widths ``width * (1, 2, 4, 8)``.

    Examples:
        >>> from lightning_nas.models import resnet34
        >>> net = resnet34(width=8)
        >>> [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]  # blocks per stage
        [3, 4, 6, 3]
    """
    return ResNet((3, 4, 6, 3), num_classes, width, in_channels)


def resnet50(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes, width, in_channels, bottleneck=True)
