"""Correctness found while hardening (issue 15, item 10): ignore_index labels in the teacher-student agreement,
GradientSHAP leaves the caller's random generators alone, and eval-mode probes restore train() even when
they fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_nas.explain.agreement import AgreementAccumulator, agreement
from lightning_nas.explain.attribution import attribute


# ------------------------------------------------------------------------------------------- agreement
def test_ignore_index_rows_are_not_counted_as_class_zero():
    s = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    t = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    y = torch.tensor([0, 1, -100, -100])  # two padding rows (torch's default ignore_index)
    res = agreement(s, t, y)
    rows = {r[0]: r for r in res["rows"]}
    assert rows[0][1] == 1 and rows[0][3] == 1.0  # before: support 3 and student accuracy 1/3 for class 0
    assert set(rows) == {0, 1} and res["agreement"] == 1.0  # the two ignored rows are left out entirely
    custom = agreement(s, t, torch.tensor([0, 1, 7, 7]), ignore_index=7)
    assert {r[0]: r[1] for r in custom["rows"]} == {0: 1, 1: 1}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) or equal ignore_index=-100, got 5"):
        agreement(s, t, torch.tensor([0, 1, 5, 2]))
    acc = AgreementAccumulator(ignore_index=-1)
    acc.update(s, t, torch.tensor([-1, -1, -1, -1]))
    assert acc.compute()["rows"] == [] and np.isnan(acc.compute()["agreement"])


# ------------------------------------------------------------------------------------------- gradient_shap
def test_gradient_shap_leaves_the_global_generators_alone():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.rand(5, 1, 4, 4)
    target = torch.zeros(5, dtype=torch.long)

    def run():
        return attribute(model, x, target, "gradient_shap", seed=3)

    torch.manual_seed(123)
    np.random.seed(123)
    want_torch, want_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    a = run()
    assert torch.equal(torch.rand(3), want_torch)  # before: the user's generator was reset to seed 3
    assert np.array_equal(np.random.rand(3), want_np)
    torch.manual_seed(999)
    np.random.seed(999)
    assert torch.equal(run(), a)  # and the attribution is reproducible from its own seed, whatever the state


# ------------------------------------------------------------------------------------------- train() restored
class _Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


def test_oneshot_mean_loss_restores_train_mode_on_error():
    from lightning_nas.callbacks import DifferentiableNAS

    cb = DifferentiableNAS()
    module = _Module().train()

    def failing_loss(pl_module, batch, i):
        assert not pl_module.training  # the probe runs in eval mode
        raise RuntimeError("the user's training_step failed")

    cb._loss = failing_loss
    with pytest.raises(RuntimeError, match="training_step failed"):
        cb._mean_loss(None, module, [object()])
    assert module.training


def test_drift_monitor_restores_train_mode_on_error(monkeypatch, tmp_path):
    import lightning_nas.callbacks.drift as drift_mod
    from lightning_nas.callbacks import DriftMonitor
    from lightning_nas.deploy import bundle
    from tests.helpers import trained_digits_cnn

    net, dm = trained_digits_cnn(epochs=1)
    out = bundle(net, dm.example_input(4), tmp_path / "b", reference_data=dm.split("train").tensors[0])
    cb = DriftMonitor(out)

    def failing_share(model, x, mode):
        assert not model.training
        raise RuntimeError("attribution failed")

    monkeypatch.setattr(drift_mod, "attribution_share", failing_share)

    class _Trainer:
        world_size, is_global_zero = 1, True

    cb._x, cb._classes = [dm.split("val").tensors[0][:40]], [torch.zeros(40, dtype=torch.long)]  # kept on the device
    net.train()
    with pytest.raises(RuntimeError, match="attribution failed"):
        cb._check(_Trainer(), net, "validate")
    assert net.training
