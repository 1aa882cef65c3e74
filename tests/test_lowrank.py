"""Truncated-SVD low-rank factorization: exactness, rank choice, skipping, callback, resume, bad input."""

from __future__ import annotations

import copy
import json
import pathlib

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.callbacks import LowRankFactorization
from lightning_nas.compress import lowrank as LR
from lightning_nas.deploy import load_compressed, measure
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer


def test_full_rank_factors_are_exact_and_truncation_error_follows_spectrum():
    torch.manual_seed(0)
    lin, x = nn.Linear(40, 30), torch.randn(5, 40)
    conv, xc = nn.Conv2d(6, 12, 3, stride=2, padding=1), torch.randn(2, 6, 9, 9)
    for layer, inp in ((lin, x), (conv, xc)):
        full = min(layer.weight.shape[0], layer.weight[0].numel())
        torch.testing.assert_close(LR.factor_layer(layer, full)(inp), layer(inp), atol=1e-4, rtol=1e-4)
    # Eckart-Young: the rank-r error (spectral norm) is the (r+1)-th singular value
    s = torch.linalg.svdvals(lin.weight.detach())
    f = LR.factor_layer(lin, 10)
    w_r = f[1].weight @ f[0].weight
    assert abs(float(torch.linalg.matrix_norm(lin.weight - w_r, ord=2)) - float(s[10])) < 1e-4


def test_choose_rank_by_energy_and_budget():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9/14, 13/14, 1
    assert LR.choose_rank(s, energy=0.6) == 1 and LR.choose_rank(s, energy=0.9) == 2
    assert LR.choose_rank(s, energy=1.0) == 3
    assert LR.choose_rank(s, budget=0.5, per_rank_cost=10, full_cost=60) == 3


def test_factorize_reduces_macs_and_skips_where_it_would_not():
    torch.manual_seed(0)
    model, x = DigitsCNN(64), torch.rand(8, 1, 8, 8)
    dense = measure(model, x, latency=False, onnx=False)
    ranks = []
    for energy in (0.5, 0.8, 0.99):
        m = copy.deepcopy(model)
        rep = {r.layer: r for r in LR.factorize(m, energy=energy)}
        ranks.append(rep["features.3"].rank)
        if rep["features.3"].rank is not None:
            assert measure(m, x, latency=False, onnx=False).macs < dense.macs
            assert rep["features.3"].energy_kept >= energy
    assert ranks[0] < ranks[1] and ranks[2] is None  # 0.99 energy needs nearly full rank: skipped, with reason
    m = copy.deepcopy(model)
    rep = {r.layer: r for r in LR.factorize(m, energy=0.99)}
    assert "not factorized" in rep["features.3"].reason and isinstance(m.features[3], nn.Conv2d)


def test_callback_factorizes_finetunes_logs_and_resumes(tmp_path, digits):
    train = DataLoader(digits.split("train"), batch_size=64)
    val = DataLoader(digits.split("val"), batch_size=256)

    def run(epochs, ckpt=None, root="a"):
        L.seed_everything(0)
        module = Classifier(DigitsCNN(32), lr=1e-2)
        cb = LowRankFactorization(energy=0.8, start_epoch=1)
        ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / root, save_last=True, save_top_k=0)
        tr = fast_trainer(
            tmp_path / root,
            max_epochs=epochs,
            deterministic=True,
            num_sanity_val_steps=0,
            callbacks=[cb, ck],
            enable_checkpointing=True,
        )
        tr.fit(module, train, val, ckpt_path=ckpt)
        return module, cb, tr

    full, cb, tr = run(4)
    assert isinstance(full.net.features[3], nn.Sequential) and cb.ranks["net.features.3"] < 64
    assert tr.validate(full, val, verbose=False)[0]["val_acc"] > 0.8
    files = pathlib.Path(tr.default_root_dir, "nas_files")
    scalars = [json.loads(line) for line in (files / "scalars.jsonl").read_text().splitlines()]
    assert any("lowrank/net.features.3/rank" in r for r in scalars)
    assert (files / "series" / "lowrank_net.features.3_spectrum.json").exists()
    # what ddp_spawn hands the main process: the factor products under the original names, same function
    x = torch.rand(4, 1, 8, 8)
    sd = full.state_dict()
    cb._densify = True
    cb._dense_state_dict(full, sd, "", None)
    fresh = Classifier(DigitsCNN(32))
    fresh.load_state_dict(sd)
    full.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), full(x), atol=1e-4, rtol=1e-4)
    run(2, root="part")
    resumed, _, _ = run(4, ckpt=str(tmp_path / "part" / "last.ckpt"), root="res")
    loaded = load_compressed(Classifier(DigitsCNN(32)), str(tmp_path / "res" / "last.ckpt"))  # no Trainer
    for (k, a), (_, b), (_, c) in zip(
        full.state_dict().items(), resumed.state_dict().items(), loaded.state_dict().items()
    ):
        torch.testing.assert_close(a, b, msg=k)
        torch.testing.assert_close(a, c, msg=k)


def test_on_unmodified_lightning_demos(tmp_path):
    from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
    from lightning.pytorch.demos.transformer import LightningTransformer

    demo = DemoModel()
    with pytest.warns(UserWarning, match="skipped l1"):  # a 32->10 layer: low rank would not pay off
        fast_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[LowRankFactorization(0.9)]).fit(
            demo, DataLoader(RandomDataset(32, 64), batch_size=8)
        )
    assert isinstance(demo.l1, nn.Linear)
    tokens = torch.arange(400) % 37
    pairs = [(tokens[i : i + 12], tokens[i + 1 : i + 13]) for i in range(0, 360, 12)]
    lt = LightningTransformer(vocab_size=40)
    lt.prepare_data = lambda: None  # its prepare_data downloads WikiText-2; tests are offline
    n0 = sum(p.numel() for p in lt.parameters())
    cb = LowRankFactorization(energy=0.5, start_epoch=0)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[cb]).fit(lt, DataLoader(pairs, batch_size=4))
    assert cb.ranks and not any("self_attn" in n for n in cb.ranks)  # attention projections left alone
    assert sum(p.numel() for p in lt.parameters()) < n0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(energy=0.0), "energy"),
        (dict(energy=1.5), "energy"),
        (dict(budget=1.0), "budget"),
        (dict(energy=None), "energy"),
        (dict(start_epoch=-1), "start_epoch"),
        (dict(min_saving=1.0), "min_saving"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankFactorization(**kwargs)


def test_bad_model_config(tmp_path, digits):
    train = DataLoader(digits.split("train"), batch_size=64)
    with pytest.raises(ValueError, match="not Linear/Conv1d/Conv2d"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[LowRankFactorization(layers=["net.nope"])]).fit(
            Classifier(DigitsCNN(8)), train
        )
    with pytest.raises(ValueError, match="no Linear/Conv1d/Conv2d"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[LowRankFactorization(ignore=["net"])]).fit(
            Classifier(DigitsCNN(8)), train
        )
