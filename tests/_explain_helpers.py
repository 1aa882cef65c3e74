"""Shared by the explain tests: a digits CNN trained once per session with plain torch (about a second)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def trained_digits_cnn(width: int = 16, epochs: int = 12, seed: int = 0):
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import DigitsCNN

    torch.manual_seed(seed)
    dm = DigitsDataModule(seed=0)
    x, y = dm.split("train").tensors
    net = DigitsCNN(width)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval(), dm
