"""explain.dynamics and the TrainingDynamics callback."""

import pytest
import torch
from torch import nn

from lightning_nas.callbacks import TrainingDynamics
from lightning_nas.explain import dynamics as D
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer, read_jsonl


def test_dead_unit_probe_counts_units_that_never_fire():
    conv = nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.tensor([0.0, -100.0, -100.0, 0.0]))  # channels 1 and 2 can never fire on x >= 0
    net = nn.Sequential(conv, nn.ReLU())
    probe = D.DeadUnitProbe(D.activation_modules(net))
    with probe:
        net(torch.rand(8, 1, 3, 3) + 0.1)
    assert probe.result() == {"1": {"dead_fraction": 0.5, "dead_channel_fraction": 0.5}}
    net(torch.rand(2, 1, 3, 3))  # hooks removed on exit
    assert len(probe.result()) == 1


def test_norms_and_update_ratio_match_hand_computation():
    lin = nn.Linear(3, 2)
    layers = D.tracked_layers(nn.Sequential(lin))
    before = D.snapshot(layers)
    lin(torch.ones(1, 3)).sum().backward()
    assert D.grad_norms(layers)["0"] == pytest.approx(float(lin.weight.grad.norm()))
    with torch.no_grad():
        lin.weight.sub_(0.1 * lin.weight.grad)
    expected = float((0.1 * lin.weight.grad).norm() / before["0"].norm())
    assert D.update_ratios(layers, before)["0"] == pytest.approx(expected, rel=1e-5)
    assert D.weight_norms(layers)["0"] == pytest.approx(float(lin.weight.norm()))
    with pytest.raises(ValueError, match="layers"):
        D.tracked_layers(nn.Sequential(lin), ["nope"])


def test_callback_logs_per_layer_keys_every_n_steps(tmp_path, digits):
    cb = TrainingDynamics(every_n_steps=5, histogram_every_n_steps=10)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=12, limit_val_batches=1, callbacks=[cb])
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    recs = read_jsonl(tmp_path / "nas_files" / "scalars.jsonl")
    assert [r["step"] for r in recs] == [0, 5, 10]
    r = recs[-1]
    for layer in ("net.features.0", "net.features.3", "net.classifier"):
        for k in ("weight_norm", "grad_norm", "update_ratio"):
            assert r[f"dynamics/{layer}/{k}"] > 0
        assert 1e-6 < r[f"dynamics/{layer}/update_ratio"] < 1
    assert 0 <= r["dynamics/net.features.2/dead_fraction"] <= 1
    assert "dynamics/net.features.5/dead_channel_fraction" in r and r["dynamics/grad_norm_total"] > 0
    hists = sorted(p.name for p in (tmp_path / "nas_files" / "histograms").iterdir())
    assert "dynamics_net.features.0_weight_hist.jsonl" in hists and "dynamics_net.classifier_grad_hist.jsonl" in hists
    steps = [
        r["step"]
        for r in read_jsonl(tmp_path / "nas_files" / "histograms" / "dynamics_net.classifier_weight_hist.jsonl")
    ]
    assert steps == [0, 10]


def test_callback_on_lightning_demo_model_unmodified(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringDataModule, DemoModel

    cb = TrainingDynamics(every_n_steps=1)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[cb])
    trainer.fit(DemoModel(), datamodule=BoringDataModule())
    recs = read_jsonl(tmp_path / "nas_files" / "scalars.jsonl")
    assert len(recs) == 3 and recs[-1]["dynamics/l1/grad_norm"] > 0 and recs[-1]["dynamics/l1/update_ratio"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        TrainingDynamics(every_n_steps=0)
    with pytest.raises(ValueError, match="histogram_every_n_steps"):
        TrainingDynamics(histogram_every_n_steps=-1)


def test_unknown_layer_fails_at_setup(tmp_path, digits):
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[TrainingDynamics(layers=["net.nope"])])
    with pytest.raises(ValueError, match="net.nope"):
        trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)


def test_gradient_accumulation_logs_once_per_optimizer_step(tmp_path, digits):
    cb = TrainingDynamics(every_n_steps=2)
    trainer = fast_trainer(
        tmp_path, max_epochs=1, limit_train_batches=8, limit_val_batches=1, accumulate_grad_batches=2, callbacks=[cb]
    )
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    recs = read_jsonl(tmp_path / "nas_files" / "scalars.jsonl")
    assert [r["step"] for r in recs] == [0, 2]
    assert all(
        r["dynamics/net.classifier/update_ratio"] > 0 and r["dynamics/net.classifier/grad_norm"] > 0 for r in recs
    )
