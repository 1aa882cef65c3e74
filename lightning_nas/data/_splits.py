"""``SplitDataModule``: the part every bundled DataModule shares — fixed train/val/test ``TensorDataset`` splits
and their loaders, shuffled the same way on every run and every DDP rank (``EpochSeededSampler``)."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset


class EpochSeededSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``: Lightning calls ``set_epoch`` every epoch, so a fit
    resumed from a checkpoint sees the very batches an uninterrupted fit sees (a plain seeded generator
    would restart its sequence in the new process)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class SplitDataModule(L.LightningDataModule):
    """A DataModule whose ``setup()`` fills ``self._splits`` with ``{"train", "val", "test"}`` ``TensorDataset``s;
    subclasses set ``batch_size``, ``seed`` and ``num_workers`` and implement ``setup``."""

    batch_size: int
    seed: int
    num_workers: int
    _splits: dict[str, TensorDataset] | None

    def setup(self, stage: str | None = None) -> None:
        raise NotImplementedError

    def split(self, name: str) -> TensorDataset:
        """The ``"train"``, ``"val"`` or ``"test"`` dataset (calls ``setup`` if needed)."""
        self.setup()
        assert self._splits is not None  # setup() made them
        return self._splits[name]

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return self.split("val").tensors[0][:batch_size].clone()

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        ds = self.split(name)
        sampler = EpochSeededSampler(len(ds), self.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
