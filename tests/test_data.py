import numpy as np
import pytest
import torch

from lightning_nas.data import DigitsDataModule


def test_shapes_and_split_sizes():
    dm = DigitsDataModule(batch_size=32, seed=0)
    sizes = {s: len(dm.split(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.15 * 1797, abs=2) and sizes["val"] == pytest.approx(0.15 * 1797, abs=2)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    flat = DigitsDataModule(flat=True)
    assert next(iter(flat.val_dataloader()))[0].shape[1:] == (64,)
    assert flat.input_shape == (64,) and dm.input_shape == (1, 8, 8)


def test_split_is_deterministic_by_seed_and_disjoint():
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).tensors[0], b.split(s).tensors[0])
    assert not torch.equal(a.split("test").tensors[0], c.split("test").tensors[0])
    rows = lambda s: {t.numpy().tobytes() for t in a.split(s).tensors[0]}  # noqa: E731
    # the digits data holds a few duplicate images, so compare sizes of index sets via tensors
    assert len(a.split("train")) + len(a.split("val")) + len(a.split("test")) == 1797
    assert len(rows("test") & rows("val")) <= 5
    # shuffling of train is seeded too
    xa = next(iter(a.train_dataloader()))[0]
    xb = next(iter(b.train_dataloader()))[0]
    assert torch.equal(xa, xb)


def test_every_class_in_every_split_stratified():
    dm = DigitsDataModule(seed=3)
    for s in ("train", "val", "test"):
        counts = np.bincount(dm.split(s).tensors[1].numpy(), minlength=10)
        assert (counts > 0).all()
        frac = counts / counts.sum()
        assert frac.max() - frac.min() < 0.03


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 0.9}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -2}, "num_workers"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
    with pytest.raises(TypeError, match="flat"):
        DigitsDataModule(flat="yes")


def test_train_order_depends_only_on_seed_and_epoch():
    """A resumed fit (new process, new loader) must see the same batches as an uninterrupted one."""
    first = DigitsDataModule(seed=4).train_dataloader()
    first.sampler.set_epoch(3)
    again = DigitsDataModule(seed=4).train_dataloader()
    again.sampler.set_epoch(3)
    assert torch.equal(next(iter(first))[1], next(iter(again))[1])
    again.sampler.set_epoch(4)
    assert not torch.equal(next(iter(first))[1], next(iter(again))[1])
