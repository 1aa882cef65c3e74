"""The data the projects train on: scikit-learn's bundled 8x8 digits (no download).

Most projects use ``lightning_nas.data.DigitsDataModule`` as their data module (it is a plain
LightningDataModule); the dict-batch project writes its own Dataset, here.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset


class DigitsDictDataset(Dataset):
    """Each item is ``{"image": (1, 8, 8) float tensor in [0, 1], "label": int}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(images.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


class DigitsDictDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        d = load_digits()
        tr, va = train_test_split(np.arange(len(d.target)), test_size=0.15, stratify=d.target, random_state=self.seed)
        self.train_set = DigitsDictDataset(d.data[tr], d.target[tr])
        self.val_set = DigitsDictDataset(d.data[va], d.target[va])

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
