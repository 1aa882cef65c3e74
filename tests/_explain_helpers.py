"""Shared by the explain tests: a digits CNN trained once per session with plain torch (about a second)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
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
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval(), dm


class TokenDigits:
    """Real data for the demo transformer: each digit's first 16 pixels (0..16) as tokens, next-token targets."""

    def __new__(cls, batch_size: int = 8):
        import lightning as L
        from sklearn.datasets import load_digits
        from torch.utils.data import DataLoader, TensorDataset

        class _DM(L.LightningDataModule):
            def setup(self, stage=None):
                tok = torch.from_numpy(load_digits().data[:, 8:25].astype("int64"))  # rows 2-3 of each image
                self.train = TensorDataset(tok[:200, :-1], tok[:200, 1:])
                self.val = TensorDataset(tok[200:264, :-1], tok[200:264, 1:])

            def train_dataloader(self):
                return DataLoader(self.train, batch_size=batch_size)

            def val_dataloader(self):
                return DataLoader(self.val, batch_size=batch_size)

        return _DM()


def last_token_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Adapter for ``LightningTransformer``: feed the tokens as source and target, keep the last position."""
    return model(x, x).view(x.shape[0], x.shape[1], -1)[:, -1]
