"""QuantizationAware on real fits: int8 artefacts, schedule, explanations in W&B, resume, bad input."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import fast_trainer


def _loaders(dm, batch=64):
    train = DataLoader(dm.split("train"), batch_size=batch, shuffle=False)  # fixed order: resume comparable
    return train, DataLoader(dm.split("val"), batch_size=128)


class _ScaleProbe(L.Callback):
    def __init__(self, qat, kd=None):
        self.qat, self.kd, self.states, self.val_moved, self.adapter0 = qat, kd, [], [], None

    def on_fit_start(self, trainer, pl_module):
        if self.kd is not None:
            self.adapter0 = {k: v.clone() for k, v in self.kd.adapters.state_dict().items()}

    def on_validation_start(self, trainer, pl_module):
        from lightning_nas.compress.quantize import quant_state

        self._before = None
        if self.qat.qat_model is None:  # the swap happens before the first training step (the sanity check is float)
            return
        self._before = quant_state(self.qat.qat_model)
        self._bn_before = {k: v.clone() for k, v in self.qat.qat_model.state_dict().items() if "running_" in k}

    def on_validation_end(self, trainer, pl_module):
        from lightning_nas.compress.quantize import quant_state

        if self._before is None:
            return
        after = quant_state(self.qat.qat_model)
        # a value that changed (per-channel buffers are only *sized* on the first forward: [] -> [C])
        self.val_moved.append(
            [
                k
                for k in after
                if after[k].shape == self._before[k].shape
                and not torch.equal(after[k], self._before[k])
                and k.endswith(("min_val", "max_val", ".scale", ".zero_point"))
            ]
            + [
                k
                for k, v in self.qat.qat_model.state_dict().items()  # folded BN statistics
                if k in self._bn_before and not torch.equal(v, self._bn_before[k])
            ]
        )

    def on_train_epoch_end(self, trainer, pl_module):
        from lightning_nas.compress.quantize import quant_state

        self.states.append({k: v for k, v in quant_state(self.qat.qat_model).items() if k.endswith(".scale")})


@pytest.mark.slow
def test_kd_and_qat_in_one_fit_logged_to_wandb(tmp_path, digits):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware
    from lightning_nas.deploy.export import onnx_session
    from lightning_nas.models import Classifier, DigitsCNN
    from lightning_nas.tracking import read_offline_run

    L.seed_everything(0)
    teacher = DigitsCNN(16)
    student = Classifier(DigitsCNN(8))
    float_net = student.net
    qat = QuantizationAware(start_epoch=1, freeze_observers_after=1, onnx_path=str(tmp_path / "int8.onnx"))
    kd = KnowledgeDistillation(teacher, temperature=3.0, alpha=0.6, features={"net.features.3": "features.3"})
    probe = _ScaleProbe(qat, kd)
    logger = WandbLogger(project="t", save_dir=str(tmp_path), offline=True)
    trainer = fast_trainer(
        tmp_path, max_epochs=3, limit_train_batches=6, logger=logger, log_every_n_steps=2, callbacks=[kd, qat, probe]
    )
    trainer.fit(student, datamodule=digits)
    wandb.finish()

    # the user's module is float again, with its own net object and no lightning_nas leftovers
    assert student.net is float_net and "training_step" not in student.__dict__
    assert not hasattr(student, "_kd_adapters") and len(list(kd.adapters.parameters())) == 2
    # activation observers ran in epoch 1 only (QAT starts at 1, frozen after 1 QAT epoch): epoch 2 kept epoch 1's
    # activation scales; weight ranges keep following the weights (QATRecipe.freeze_weight_ranges=False)
    assert qat.qat_steps == 12
    act = [k for k in probe.states[1] if "weight_fake_quant" not in k]
    assert act and all(torch.equal(probe.states[1][k], probe.states[2][k]) for k in act)
    assert any(not torch.equal(probe.states[1][k], probe.states[2][k]) for k in probe.states[1] if k not in act)
    assert probe.val_moved and not any(probe.val_moved)  # validation data never reaches observers or BN statistics
    # the feature adapters were trained by the user's optimizer
    assert any(not torch.equal(v, kd.adapters.state_dict()[k]) for k, v in probe.adapter0.items())
    # real int8: torch and ONNX Runtime, the ONNX file written by rank zero
    x = digits.split("test").tensors[0]
    with torch.no_grad():
        ref = qat.int8_model(x)
    sess = onnx_session(tmp_path / "int8.onnx")
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref.numpy(), atol=0.1)
    m = qat.measurements
    assert m["quant/int8_size_bytes"] < m["quant/fp32_size_bytes"] and m["quant/onnx_int8_latency_ms"] > 0

    history, summary, _ = read_offline_run(tmp_path)
    keys = set().union(*history)
    for layer in ("net.features.0", "net.features.3", "net.classifier"):  # full names in the LightningModule
        assert f"quant/{layer}/sqnr_db" in keys
    assert {
        "distill/agreement",
        "distill/kl",
        "distill/per_class",
        "explain/sensitivity",
        "distill/kd_loss",
        "distill/feature_loss",
    } <= keys
    table = next(h["explain/sensitivity"] for h in history if "explain/sensitivity" in h)
    assert table["_type"] == "table-file" and table["ncols"] == 5
    assert summary["quant/size_ratio"] == pytest.approx(m["quant/size_ratio"])
    agreements = [h["distill/agreement"] for h in history if "distill/agreement" in h]
    assert len(agreements) == 3 and all(0 <= a <= 1 for a in agreements)


@pytest.mark.slow
def test_resume_mid_qat_gives_the_same_int8_model(tmp_path, digits):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_nas.callbacks import QuantizationAware
    from lightning_nas.models import Classifier, DigitsCNN

    train, val = _loaders(digits)
    x = digits.split("test").tensors[0][:64]

    def run(epochs, root, ckpt=None):
        L.seed_everything(0)
        qat = QuantizationAware(start_epoch=1, freeze_observers_after=2, measure=False, explain=False)
        # default sanity check on: on resume it validates the restored QAT model before training goes on
        trainer = fast_trainer(
            root,
            max_epochs=epochs,
            limit_train_batches=5,
            limit_val_batches=2,
            enable_checkpointing=True,
            callbacks=[qat, ModelCheckpoint(dirpath=root, save_last=True)],
        )
        trainer.fit(Classifier(DigitsCNN(8)), train, val, ckpt_path=ckpt)
        with torch.no_grad():
            return qat.int8_model(x), qat

    full, qa = run(4, tmp_path / "a")
    run(2, tmp_path / "b")  # "killed" after epoch 2: mid-QAT, observers still running
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert any("activation_post_process" in k for k in ckpt["state_dict"])  # observer state is checkpointed
    resumed, qb = run(4, tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert qa.qat_steps == qb.qat_steps == 15
    assert torch.equal(full, resumed)


def test_qat_on_unmodified_lightning_demo_model(tmp_path):
    from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset

    from lightning_nas.callbacks import QuantizationAware

    model = DemoModel(out_dim=4)
    qat = QuantizationAware(measure=True, explain=True)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2, callbacks=[qat])
    trainer.fit(model, DataLoader(RandomDataset(32, 64), batch_size=8), DataLoader(RandomDataset(32, 32), batch_size=8))
    assert isinstance(model.l1, torch.nn.Linear)
    # the whole forward: flatten, the int8 layer, then the final ReLU
    assert qat.int8_model.get_submodule("parts.0.layer")._get_name() == "QuantizedLinear"
    x = torch.randn(5, 32)
    out = qat.int8_model(x)
    assert out.shape == (5, 4) and (out >= 0).all()
    assert torch.allclose(out, model(x).detach(), atol=0.1)
    qat.export_onnx(tmp_path / "demo.onnx")
    from lightning_nas.deploy.export import onnx_session

    assert onnx_session(tmp_path / "demo.onnx").run(None, {"input": x.numpy()})[0].shape == (5, 4)


def test_bad_input_fails_before_the_first_step(tmp_path, digits):
    from lightning.pytorch.demos.boring_classes import DemoModel

    from lightning_nas.callbacks import QuantizationAware
    from lightning_nas.models import Classifier, DigitsCNN

    with pytest.raises(ValueError, match="start_epoch"):
        QuantizationAware(start_epoch=-1)
    with pytest.raises(ValueError, match="backend"):
        QuantizationAware(backend="cuda")
    with pytest.raises(ValueError, match="onnx_form"):
        QuantizationAware(onnx_form="int4")
    with pytest.raises(TypeError, match="ignore"):
        QuantizationAware(ignore="classifier")

    class NoLayers(DemoModel):
        def __init__(self):
            super().__init__()
            self.l1 = torch.nn.Identity()
            self.w = torch.nn.Parameter(torch.zeros(1))

    cases = [
        (NoLayers(), QuantizationAware(), "no quantizable layer"),
        (Classifier(DigitsCNN(4)), QuantizationAware(ignore=["fc"]), "`ignore` name 'fc' matches no submodule"),
        (Classifier(DigitsCNN(4)), QuantizationAware(module_name="body"), "`module_name` 'body'"),
    ]
    for model, cb, msg in cases:
        steps = []
        probe = L.Callback()
        probe.on_train_batch_start = lambda *a, steps=steps, **k: steps.append(1)
        with pytest.raises(ValueError, match=msg):
            fast_trainer(tmp_path, callbacks=[cb, probe], limit_train_batches=2).fit(model, datamodule=digits)
        assert not steps


class _FeaturesClassifier(L.LightningModule):
    """features + classifier on the LightningModule itself, the step calling them in turn (v0.1 quantized only
    ``features``: int8_model(x) gave (N, 16, 4, 4))."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = torch.nn.Linear(16 * 16, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.classifier(self.features(x).flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.classifier(self.features(x).flatten(1)).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 3e-3)


def test_qat_quantizes_the_whole_model_the_step_runs(tmp_path, digits):
    from lightning_nas.callbacks import QuantizationAware

    L.seed_everything(0)
    module, qat = _FeaturesClassifier(), QuantizationAware(measure=False)
    fast_trainer(tmp_path, max_epochs=2, callbacks=[qat]).fit(module, datamodule=digits)
    assert qat.targets == ["features", "classifier"]
    x, y = digits.split("val").tensors
    with torch.no_grad():
        q, f = qat.int8_model(x), module.classifier(module.features(x).flatten(1))
    assert q.shape == f.shape == (len(x), 10)
    kinds = {m._get_name() for m in qat.int8_model.modules()}
    assert {"QuantizedConvReLU2d", "QuantizedLinear"} <= kinds  # both parts are real int8
    acc_q, acc_f = float((q.argmax(1) == y).float().mean()), float((f.argmax(1) == y).float().mean())
    assert acc_q >= acc_f - 0.02, (acc_q, acc_f)
