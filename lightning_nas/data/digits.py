"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes) as a LightningDataModule."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.data._splits import SplitDataModule


def load_digits_arrays(flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: images scaled to [0, 1] as float32 ``(N, 1, 8, 8)`` (or ``(N, 64)`` when flat).

    Examples:
        >>> from lightning_nas.data import load_digits_arrays
        >>> x, y = load_digits_arrays()
        >>> x.shape, x.dtype, y.shape, sorted(set(y.tolist())) == list(range(10))
        ((1797, 1, 8, 8), dtype('float32'), (1797,), True)
        >>> load_digits_arrays(flat=True)[0].shape
        (1797, 64)
    """
    ds = load_digits()
    x = (ds.data / 16.0).astype(np.float32)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    return x, ds.target.astype(np.int64)


class DigitsDataModule(SplitDataModule):
    """Digits with a deterministic stratified train/val/test split.

    Args:
        batch_size: samples per batch.
        val_fraction: fraction of all samples in the validation split.
        test_fraction: fraction of all samples in the test split.
        seed: seed of the split (the same seed always gives the same split) and of train shuffling.
        flat: serve flat 64-vectors instead of ``1x8x8`` images.
        num_workers: DataLoader workers.

    Examples:
        >>> from lightning_nas.data import DigitsDataModule
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.shape, float(x.min()) >= 0.0, float(x.max()) <= 1.0
        (torch.Size([32, 1, 8, 8]), torch.Size([32]), True, True)
        >>> len(dm.train_dataloader().dataset), len(dm.val_dataloader().dataset)  # 1,797 digits: 70/15/15
        (1257, 270)
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        flat: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_range("val_fraction", val_fraction, 0.0, 0.5, low_inclusive=False)
        check_range("test_fraction", test_fraction, 0.0, 0.5, low_inclusive=False)
        check_int("seed", seed, 0)
        check_type("flat", flat, bool)
        check_int("num_workers", num_workers, 0)
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.seed, self.flat, self.num_workers = seed, flat, num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (64,) if self.flat else (1, 8, 8)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        x, y = load_digits_arrays(self.flat)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=self.test_fraction, stratify=y, random_state=self.seed)
        val_size = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_size, stratify=y[rest], random_state=self.seed)
        t = lambda ids: TensorDataset(torch.from_numpy(x[ids]), torch.from_numpy(y[ids]))  # noqa: E731
        self._splits = {"train": t(train), "val": t(val), "test": t(test)}
