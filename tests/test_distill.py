"""compress.distill, explain.agreement and the KnowledgeDistillation callback."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_nas.compress.distill import FeatureAdapter, kd_loss, layer_width, load_teacher
from lightning_nas.explain.agreement import AgreementAccumulator, agreement
from tests.helpers import fast_trainer


def test_kd_loss_is_t2_kl_teacher_student():
    torch.manual_seed(0)
    s, t, T = torch.randn(6, 5), torch.randn(6, 5), 3.0
    pt, ps = F.softmax(t / T, 1), F.softmax(s / T, 1)
    manual = (pt * (pt.log() - ps.log())).sum(1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, T), manual, atol=1e-6)
    assert kd_loss(t, t, T).abs() < 1e-6
    seq = kd_loss(s.view(2, 3, 5), t.view(2, 3, 5), T)  # sequence logits: rows flattened
    assert torch.allclose(seq, manual, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, t[:, :4])


def test_feature_adapter_and_width():
    a = FeatureAdapter(4, 4)
    f = torch.randn(2, 4, 6, 6)
    assert torch.allclose(a(f, f), f, atol=1e-6)  # identity start when widths match
    b = FeatureAdapter(4, 8)
    assert b(f, torch.zeros(2, 8, 3, 3)).shape == (2, 8, 3, 3)
    assert b(torch.randn(3, 4), torch.zeros(3, 8)).shape == (3, 8)
    assert layer_width(nn.Sequential(nn.Conv2d(1, 7, 3), nn.BatchNorm2d(7), nn.ReLU())) == 7
    assert layer_width(nn.ReLU()) is None


def test_agreement_accumulator_counts():
    s = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]])
    t = torch.tensor([[2.0, 0, 0], [0, 2, 0], [2, 0, 0], [0, 2, 0]])
    y = torch.tensor([0, 1, 0, 2])
    acc = AgreementAccumulator()
    acc.update(s[:2], t[:2], y[:2])
    acc.update(s[2:], t[2:], y[2:])
    res = acc.compute()
    assert res["agreement"] == 0.5 and res["kl"] > 0
    rows = {r[0]: r for r in res["rows"]}
    assert rows[0] == [0, 2, 0.5, 0.5, 1.0] and rows[2] == [2, 1, 0.0, 1.0, 0.0]
    assert agreement(s, s)["agreement"] == 1.0 and abs(agreement(s, s)["kl"]) < 1e-9


def test_load_teacher_from_checkpoint_and_bad_checkpoints(tmp_path):
    from lightning_nas.models import Classifier, DigitsCNN

    net = DigitsCNN(4)
    torch.save(Classifier(net).state_dict(), tmp_path / "lightning_style.pt")  # keys prefixed "net."
    t = load_teacher(str(tmp_path / "lightning_style.pt"), DigitsCNN(4))
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), net.state_dict().values()))
    torch.save(net, tmp_path / "pickled.pt")  # a whole module: needs pickle
    with pytest.raises(ValueError, match="weights_only=True"):
        load_teacher(str(tmp_path / "pickled.pt"), DigitsCNN(4))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_teacher(str(tmp_path / "list.pt"), DigitsCNN(4))
    with pytest.raises(ValueError, match="does not fit"):
        load_teacher(str(tmp_path / "lightning_style.pt"), DigitsCNN(8))
    with pytest.raises(ValueError, match="teacher_architecture"):
        load_teacher(str(tmp_path / "lightning_style.pt"))


def test_constructor_validation():
    from lightning_nas.callbacks import KnowledgeDistillation

    t = nn.Linear(2, 2)
    for kw, msg in [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
    ]:
        with pytest.raises(ValueError, match=msg):
            KnowledgeDistillation(t, **kw)
    with pytest.raises(TypeError, match="teacher"):
        KnowledgeDistillation(3)


def _fit_classifier(tmp_path, digits, callbacks, width=8, seed=0, epochs=1):
    from lightning_nas.models import Classifier, DigitsCNN

    L.seed_everything(seed)
    model = Classifier(DigitsCNN(width))
    fast_trainer(
        tmp_path,
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    ).fit(model, datamodule=digits)
    return model


def test_loss_is_one_minus_alpha_task_plus_alpha_kd(tmp_path, digits):
    """alpha=0 trains exactly like no callback; alpha=1 uses only the KD term (equal nets -> zero gradient)."""
    from lightning_nas.callbacks import KnowledgeDistillation
    from lightning_nas.models import DigitsCNN

    plain = _fit_classifier(tmp_path, digits, [])
    zero = _fit_classifier(tmp_path, digits, [KnowledgeDistillation(DigitsCNN(4), alpha=0.0, explain=False)])
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))

    class Probe(L.Callback):
        losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(
                (
                    float(outputs["loss"]),
                    float(trainer.callback_metrics["distill/kd_loss"]),
                    float(trainer.callback_metrics["distill/task_loss"]),
                )
            )

    probe = Probe()
    _fit_classifier(tmp_path, digits, [KnowledgeDistillation(DigitsCNN(16), alpha=0.3, temperature=2.0), probe])
    for total, kd, task in probe.losses:
        assert total == pytest.approx(0.7 * task + 0.3 * kd, rel=1e-5)


def test_callback_trains_exactly_like_a_hand_written_kd_loop(tmp_path, digits):
    """End to end: the teacher in eval mode without gradients, the student's own logits, T^2-scaled KL(p_t || p_s)
    mixed with the user's loss, one optimizer step per batch -> the very weights of a plain torch KD loop."""
    import copy

    from lightning_nas.callbacks import KnowledgeDistillation
    from lightning_nas.models import Classifier, DigitsCNN

    torch.manual_seed(0)
    teacher = DigitsCNN(16).train()  # left in train mode on purpose: the callback must switch it to eval
    reference_teacher = copy.deepcopy(teacher).eval()
    L.seed_everything(1)
    student = Classifier(DigitsCNN(4))
    manual = copy.deepcopy(student)
    fast_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[KnowledgeDistillation(teacher, temperature=4.0, alpha=0.7, explain=False)],
    ).fit(student, datamodule=digits)
    opt = torch.optim.Adam(manual.parameters(), lr=manual.lr)
    loader = digits.train_dataloader()
    loader.sampler.set_epoch(0)
    manual.train()
    for _, (x, y) in zip(range(5), loader):
        z = manual(x)
        with torch.no_grad():
            zt = reference_teacher(x)
        # kd_loss is checked against the formula above; the same float ops keep Adam's steps on the near-zero
        # gradients of the conv biases before BatchNorm identical
        loss = 0.3 * F.cross_entropy(z, y) + 0.7 * kd_loss(z, zt, 4.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(student.state_dict().items(), manual.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference_teacher.state_dict().values())
    )  # teacher untouched


def test_kd_bad_model_input_fails_before_the_first_step(tmp_path, digits):
    from lightning_nas.callbacks import KnowledgeDistillation
    from lightning_nas.models import Classifier, DigitsCNN

    cases = [
        (KnowledgeDistillation(DigitsCNN(8, num_classes=7)), "teacher's output shape"),
        (KnowledgeDistillation(DigitsCNN(8), features={"net.nope": "features.3"}), "'net.nope'"),
        (KnowledgeDistillation(DigitsCNN(8), features={"net.features.3": "missing"}), "'missing'"),
        (KnowledgeDistillation(DigitsCNN(8), features={"net.features.2": "features.3"}), "channel count"),
    ]
    for cb, msg in cases:
        steps = []
        probe = L.Callback()
        probe.on_before_optimizer_step = lambda *a, steps=steps, **k: steps.append(1)
        with pytest.raises(ValueError, match=msg):
            fast_trainer(tmp_path, callbacks=[cb, probe], limit_train_batches=2).fit(
                Classifier(DigitsCNN(4)), datamodule=digits
            )
        assert not steps


def test_kd_on_unmodified_lightning_demo_model(tmp_path):
    from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
    from torch.utils.data import DataLoader

    from lightning_nas.callbacks import KnowledgeDistillation

    L.seed_everything(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    model = DemoModel(out_dim=4)
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=1.0, features={"l1": "3"})
    fast_trainer(tmp_path, max_epochs=2, limit_val_batches=2, callbacks=[kd]).fit(
        model, DataLoader(RandomDataset(32, 64), batch_size=8), DataLoader(RandomDataset(32, 32), batch_size=8)
    )
    assert "training_step" not in model.__dict__ and len(kd.history) == 2
    assert all(0 <= h["distill/agreement"] <= 1 for h in kd.history)


def test_callbacks_build_from_lightning_cli_config():
    """The type hints are enough for jsonargparse (LightningCLI YAML: class_path / init_args)."""
    from jsonargparse import ArgumentParser

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware

    p = ArgumentParser()
    p.add_class_arguments(KnowledgeDistillation, "kd")
    p.add_class_arguments(QuantizationAware, "qat")
    cfg = p.parse_object(
        {
            "kd": {
                "teacher": {"class_path": "lightning_nas.models.DigitsCNN", "init_args": {"width": 8}},
                "alpha": 0.3,
                "features": {"net.features.3": "features.3"},
            },
            "qat": {"start_epoch": 1, "ignore": ["classifier"], "freeze_bn_after": 2},
        }
    )
    objs = p.instantiate_classes(cfg)
    assert objs.kd.alpha == 0.3 and objs.kd.features == {"net.features.3": "features.3"}
    assert type(objs.kd.teacher).__name__ == "DigitsCNN" and not objs.kd.teacher.training
    assert objs.qat.ignore == ["classifier"] and objs.qat.freeze_bn_after == 2


def test_agreement_metric_syncs_by_sum_and_never_reads_back_in_update(monkeypatch):
    """Two ranks' halves merged (what torchmetrics' sum reduction does over DDP) give the whole; ``update`` makes no
    host read (``.item``, ``.cpu``, ``.tolist``, ``bool``/``float``/``int`` of a tensor)."""
    from lightning_nas.explain.agreement import Agreement

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    y[::7] = -100
    whole, a, b = Agreement(5, 2.0), Agreement(5, 2.0), Agreement(5, 2.0)
    whole.update(s, t, y)
    calls = []
    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *x, _o=orig, _n=name, **k: calls.append(_n) or _o(self, *x)
        )
    a.update(s[:25], t[:25], y[:25])
    b.update(s[25:], t[25:], y[25:])
    monkeypatch.undo()
    assert calls == []
    a.merge_state(b)
    got, want = a.compute(), whole.compute()
    assert got["rows"] == want["rows"] and got["agreement"] == want["agreement"]
    assert abs(got["kl"] - want["kl"]) < 1e-9
    bad = Agreement(5)
    bad.update(s[:4], t[:4], torch.tensor([0, 9, 1, -3]))  # recorded, not raised, in the step
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) or equal ignore_index=-100, got 9"):
        bad.compute()
