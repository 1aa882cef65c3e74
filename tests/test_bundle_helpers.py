"""Shared by the bundle/serve/drift tests: a quickly trained digits CNN and image shifts (no tests here)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from lightning_nas.data import DigitsDataModule
from lightning_nas.models import DigitsCNN, train_plain


def trained_digits_cnn(epochs: int = 6, seed: int = 0) -> tuple[torch.nn.Module, DigitsDataModule]:
    """A DigitsCNN(16) trained for a few epochs with a plain loop (~1 s), in eval mode."""
    torch.manual_seed(seed)
    dm = DigitsDataModule(seed=seed)
    net = DigitsCNN(16)
    return train_plain(net, *dm.split("train").tensors, epochs=epochs), dm


def brighter(x: np.ndarray, delta: float = 0.2) -> np.ndarray:
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


def rotated(x: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    return np.clip(ndimage.rotate(x, degrees, axes=(2, 3), reshape=False, order=1), 0.0, 1.0).astype(np.float32)


def clean_pool(dm: DigitsDataModule) -> np.ndarray:
    """Validation + test images: clean digits the profile (built on train) never saw."""
    return torch.cat([dm.split("val").tensors[0], dm.split("test").tensors[0]]).numpy()
