"""A small DARTS-style *cell* search space on digits, where ``skip`` can act as a residual connection.

In the chain space of ``_digits_space.py`` a ``skip`` just deletes a block. Here each cell has two nodes whose
inputs are summed, as in a DARTS cell::

    node1 = a(node0)
    node2 = b(node0) + c(node1)        # cell output

so ``b = skip`` makes ``node2 = node0 + c(a(node0))``, a residual block (the argument of DARTS-, Chu et al.
2021: such a skip eases the supernet's optimisation and so wins alpha beyond its merit). The network is
``stem conv3 -> cell -> maxpool -> cell -> global average pool -> linear``; both cells share their decisions
(labels ``a``, ``b``, ``c`` repeated: tied choices), so the space stays enumerable: 3 edges x {conv3, conv1,
skip} = 27 architectures. ``train_standalone`` trains one architecture from scratch (same budget as the
chain space) and ``load_truth()`` reads/extends the cached ground truth ``results/digits_cell_space_truth.json``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import _digits_space as ds  # the chain space's standalone training and truth rows (same budget)
import torch
from torch import nn

from lightning_nas import space

LABELS = ("a", "b", "c")
CANDIDATES = ("conv3", "conv1", "skip")
ARCHS: list[dict[str, str]] = [dict(zip(LABELS, c)) for c in itertools.product(CANDIDATES, repeat=len(LABELS))]
WIDTH = 16
BUDGET = {
    "epochs": 12,
    "batch_size": 64,
    "lr": 3e-3,
    "optimizer": "Adam",
    "seeds": [0, 1, 2, 3],
    "data": "DigitsDataModule(seed=0) train split; val/test splits for scoring",
}
TRUTH_PATH = Path(__file__).resolve().parent / "results" / "digits_cell_space_truth.json"


def _conv(c_in: int, c_out: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def _edge(label: str, c: int) -> space.LayerChoice:
    return space.LayerChoice({"conv3": _conv(c, c, 3), "conv1": _conv(c, c, 1), "skip": nn.Identity()}, label=label)


class Cell(nn.Module):
    """``node1 = a(x)``; output ``node2 = b(x) + c(node1)`` (edges ``a``, ``b``, ``c``: tied across cells)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b, self.c = (_edge(lb, c) for lb in LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) + self.c(self.a(x))


class DigitsCellNet(nn.Module):
    """stem conv3 -> cell -> maxpool -> cell -> global average pool -> linear."""

    def __init__(self, width: int = WIDTH, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv(1, width, 3)
        self.cell1, self.cell2 = Cell(width), Cell(width)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cell2(self.pool(self.cell1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def build_model(arch: dict[str, str] | None = None, width: int = WIDTH) -> nn.Module:
    """The search space (``arch=None``) or one architecture of it, frozen to a plain module."""
    net = DigitsCellNet(width)
    return net if arch is None else space.freeze(net, arch, inplace=True)


def arch_key(arch: dict[str, str]) -> str:
    return "-".join(arch[lb] for lb in LABELS)


def train_standalone(arch: dict[str, str], seed: int, epochs: int = BUDGET["epochs"]) -> dict[str, Any]:
    """Train ``arch`` from scratch with the chain space's loop and budget; val/test accuracy and time."""
    return ds.train_standalone(arch, seed, epochs, build=build_model)


def compute_truth(seeds: list[int] | None = None, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train all 27 architectures with every seed (seeds already in ``cached`` are reused, not retrained)."""
    truth = ds.compute_truth(list(BUDGET["seeds"] if seeds is None else seeds), cached, ARCHS, arch_key, build_model)
    return dict(truth, budget=dict(BUDGET, seeds=truth["budget"]["seeds"]))


def load_truth(recompute: bool = False) -> dict[str, Any]:
    """The cached ground truth (computed on first use, extended when ``BUDGET`` lists new seeds)."""
    cached = json.loads(TRUTH_PATH.read_text()) if TRUTH_PATH.exists() and not recompute else None
    if cached is not None and cached["budget"].get("seeds") == BUDGET["seeds"]:
        return cached
    truth = compute_truth(cached=cached)
    TRUTH_PATH.parent.mkdir(parents=True, exist_ok=True)
    TRUTH_PATH.write_text(json.dumps(truth, indent=1))
    return truth
