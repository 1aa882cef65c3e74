"""A larger enumerable space of the same family as ``_digits_space``: 5 ``LayerChoice``s x 3 = 243 architectures.

Same candidates (``conv3``, ``conv1``, ``skip``, built by ``_digits_space._block``), same width and the same
standalone training budget (``_digits_space.BUDGET``: 12 epochs of Adam, lr 3e-3, batch 64 on the digits train
split), one more stage: ``stem -> b1 -> b2 -> b3 -> maxpool -> b4 -> b5 -> global average pool -> linear``.
The multi-trial benchmark uses it where the 27-architecture space is too small to tell strategies apart.

``load_truth()`` reads (or computes, ~25 min on one core) ``results/digits_space_large_truth.json``: every
architecture trained from scratch with seeds 0, 1, 2, val and test accuracy per seed. The computation keeps a
partial file and resumes from it when interrupted.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import _digits_space as ds

LABELS = ("b1", "b2", "b3", "b4", "b5")
CANDIDATES = ds.CANDIDATES
ARCHS: list[dict[str, str]] = [dict(zip(LABELS, c)) for c in itertools.product(CANDIDATES, repeat=len(LABELS))]
SEEDS = (0, 1, 2)
BUDGET = dict(ds.BUDGET, seeds=list(SEEDS))
TRUTH_PATH = Path(__file__).resolve().parent / "results" / "digits_space_large_truth.json"


class DigitsSpaceLargeNet(nn.Module):
    """stem conv3 -> b1 -> b2 -> b3 -> maxpool -> b4 -> b5 -> global average pool -> linear."""

    def __init__(self, width: int = ds.WIDTH, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ds._conv(width, 3)
        self.stem[0] = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.b1, self.b2, self.b3 = (ds._block(lb, width) for lb in LABELS[:3])
        self.pool = nn.MaxPool2d(2)
        self.b4, self.b5 = (ds._block(lb, width) for lb in LABELS[3:])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.b3(self.b2(self.b1(self.stem(x)))))
        return self.head(self.b5(self.b4(x)).mean((2, 3)))


def build_model(arch: dict[str, str] | None = None, width: int = ds.WIDTH) -> nn.Module:
    """The search space (``arch=None``) or one architecture of it, frozen to a plain module."""
    from lightning_nas import space

    net = DigitsSpaceLargeNet(width)
    return net if arch is None else space.freeze(net, arch, inplace=True)


def arch_key(arch: dict[str, str]) -> str:
    return "-".join(arch[lb] for lb in LABELS)


def train_standalone(arch: dict[str, str], seed: int) -> dict[str, Any]:
    """Train ``arch`` from scratch with the fixed budget (``models.train_plain``); val/test accuracy and time."""
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import train_plain

    dm = DigitsDataModule(batch_size=BUDGET["batch_size"], seed=0)
    torch.manual_seed(seed)
    model = build_model(arch)
    t0 = time.perf_counter()
    train_plain(
        model, *dm.split("train").tensors, epochs=BUDGET["epochs"], lr=BUDGET["lr"], batch_size=BUDGET["batch_size"]
    )
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0}
    with torch.no_grad():
        for split in ("val", "test"):
            x, y = dm.split(split).tensors
            out[f"{split}_acc"] = float((model(x).argmax(1) == y).float().mean())
    return out


def compute_truth(path: Path = TRUTH_PATH) -> dict[str, Any]:
    """Train every architecture with every seed (resuming from ``<path>.partial``); write and return the truth."""
    torch.set_num_threads(1)
    partial = path.with_suffix(".partial.json")
    runs: dict[str, dict[str, Any]] = json.loads(partial.read_text()) if partial.exists() else {}
    for i, arch in enumerate(ARCHS):
        for s in SEEDS:
            if f"{arch_key(arch)}/{s}" not in runs:
                runs[f"{arch_key(arch)}/{s}"] = train_standalone(arch, s)
        partial.write_text(json.dumps(runs))
        print(f"{i + 1}/{len(ARCHS)} {arch_key(arch)}", flush=True)
    rows = []
    for arch in ARCHS:
        r = [runs[f"{arch_key(arch)}/{s}"] for s in SEEDS]
        rows.append(ds.truth_row(arch, arch_key(arch), r))
    truth = {"budget": BUDGET, "archs": rows}
    path.write_text(json.dumps(truth, indent=1))
    partial.unlink()
    return truth


def load_truth(recompute: bool = False) -> dict[str, Any]:
    """The cached ground truth (computed and written on first use, or when ``recompute``)."""
    if TRUTH_PATH.exists() and not recompute:
        return json.loads(TRUTH_PATH.read_text())
    TRUTH_PATH.parent.mkdir(parents=True, exist_ok=True)
    return compute_truth()


if __name__ == "__main__":
    load_truth(recompute=True)
