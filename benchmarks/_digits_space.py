"""A small enumerable CNN search space on digits, shared by the one-shot and multi-trial benchmarks.

Three ``LayerChoice``s (``b1``, ``b2``, ``b3``) of three candidates each = 27 architectures:
``conv3`` (3x3 conv-BN-ReLU), ``conv1`` (1x1 conv-BN-ReLU: depth but no receptive field) and ``skip``
(identity, parameter-free: the op DARTS tends to collapse onto). ``build_model(arch)`` builds the network
(``arch=None``: the space, with its choices); ``ARCHS`` lists every architecture; ``train_standalone``
trains one architecture from scratch with the fixed budget used for the ground truth, and
``load_truth()`` reads the cached ground truth ``results/digits_space_truth.json`` written by
``benchmarks/oneshot_search.py`` (``{"archs": [{"arch", "val_acc", "test_acc", ...}], "budget": {...}}``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_nas import space

LABELS = ("b1", "b2", "b3")
CANDIDATES = ("conv3", "conv1", "skip")
ARCHS: list[dict[str, str]] = [dict(zip(LABELS, c)) for c in itertools.product(CANDIDATES, repeat=len(LABELS))]
WIDTH = 16
BUDGET = {
    "epochs": 12,
    "batch_size": 64,
    "lr": 3e-3,
    "optimizer": "Adam",
    "seeds": list(range(8)),
    "data": "DigitsDataModule(seed=0) train split; val/test splits for scoring",
}
TRUTH_PATH = Path(__file__).resolve().parent / "results" / "digits_space_truth.json"


def _conv(c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU())


def _block(label: str, c: int) -> space.LayerChoice:
    return space.LayerChoice({"conv3": _conv(c, 3), "conv1": _conv(c, 1), "skip": nn.Identity()}, label=label)


class DigitsSpaceNet(nn.Module):
    """stem conv3 -> b1 -> b2 -> maxpool -> b3 -> global average pool -> linear."""

    def __init__(self, width: int = WIDTH, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv(width, 3)
        self.stem[0] = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.b1, self.b2 = _block("b1", width), _block("b2", width)
        self.pool = nn.MaxPool2d(2)
        self.b3 = _block("b3", width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.b2(self.b1(self.stem(x))))
        return self.head(self.b3(x).mean((2, 3)))


def build_model(arch: dict[str, str] | None = None, width: int = WIDTH) -> nn.Module:
    """The search space (``arch=None``) or one architecture of it, frozen to a plain module."""
    net = DigitsSpaceNet(width)
    return net if arch is None else space.freeze(net, arch, inplace=True)


def arch_key(arch: dict[str, str]) -> str:
    return "-".join(arch[lb] for lb in LABELS)


def train_standalone(
    arch: dict[str, str],
    seed: int,
    epochs: int = BUDGET["epochs"],
    build: Callable[[dict[str, str]], nn.Module] | None = None,
) -> dict[str, Any]:
    """Train ``arch`` from scratch (plain torch loop, the fixed budget); return val/test accuracy and time.
    ``build``: the space's ``build_model`` (default: this chain space's; the cell space passes its own)."""
    from lightning_nas.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=BUDGET["batch_size"], seed=0)
    torch.manual_seed(seed)
    model = (build or build_model)(arch)
    opt = torch.optim.Adam(model.parameters(), lr=BUDGET["lr"])
    xtr, ytr = dm.split("train").tensors
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(ytr), BUDGET["batch_size"]):
            idx = perm[i : i + BUDGET["batch_size"]]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    out = {"seconds": seconds}
    with torch.no_grad():
        for split in ("val", "test"):
            x, y = dm.split(split).tensors
            out[f"{split}_acc"] = float((model(x).argmax(1) == y).float().mean())
    return out


def truth_row(arch: dict[str, str], key: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One architecture's entry of a truth file: mean and per-seed val/test accuracy of its standalone runs."""
    return {
        "arch": arch,
        "key": key,
        "val_acc": sum(r["val_acc"] for r in runs) / len(runs),
        "test_acc": sum(r["test_acc"] for r in runs) / len(runs),
        "test_acc_per_seed": [r["test_acc"] for r in runs],
        "val_acc_per_seed": [r["val_acc"] for r in runs],
        "seconds": sum(r["seconds"] for r in runs) / len(runs),
    }


def compute_truth(
    seeds: list[int] | None = None,
    cached: dict[str, Any] | None = None,
    archs: list[dict[str, str]] | None = None,
    key: Callable[[dict[str, str]], str] = arch_key,
    build: Callable[[dict[str, str]], nn.Module] | None = None,
) -> dict[str, Any]:
    """Train every architecture (default: this space's 27) with every seed; mean accuracies per architecture.

    Seeds already in ``cached`` (an earlier truth with the same epochs) are reused, not retrained: training is
    deterministic per seed (one thread), so extending the seed list only trains the new seeds. ``archs``,
    ``key`` and ``build`` make it serve another space of the same budget (the cell space).
    """
    seeds = list(BUDGET["seeds"] if seeds is None else seeds)
    old: dict[tuple[str, int], dict[str, Any]] = {}
    if cached and cached["budget"].get("epochs") == BUDGET["epochs"]:
        for r in cached["archs"]:
            for i, s in enumerate(cached["budget"]["seeds"]):
                old[(r["key"], s)] = {
                    "val_acc": r["val_acc_per_seed"][i],
                    "test_acc": r["test_acc_per_seed"][i],
                    "seconds": r["seconds"],
                }
    rows = []
    for arch in ARCHS if archs is None else archs:
        runs = [old.get((key(arch), s)) or train_standalone(arch, s, build=build) for s in seeds]
        rows.append(truth_row(arch, key(arch), runs))
    return {"budget": dict(BUDGET, seeds=seeds), "archs": rows}


def load_truth(recompute: bool = False) -> dict[str, Any]:
    """The cached ground truth (computed on first use, extended when ``BUDGET`` lists new seeds, or
    recomputed from scratch when ``recompute``)."""
    cached = json.loads(TRUTH_PATH.read_text()) if TRUTH_PATH.exists() and not recompute else None
    if cached is not None and cached["budget"].get("seeds") == BUDGET["seeds"]:
        return cached
    truth = compute_truth(cached=cached)
    TRUTH_PATH.parent.mkdir(parents=True, exist_ok=True)
    TRUTH_PATH.write_text(json.dumps(truth, indent=1))
    return truth
