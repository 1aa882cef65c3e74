"""explain.attribution (methods, AOPC, compare) and the AttributionMonitor callback."""

import copy
import json

import lightning as L
import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from lightning_nas.callbacks import AttributionMonitor
from lightning_nas.explain import attribution as A
from lightning_nas.models import Classifier, DigitsCNN
from tests._explain_helpers import trained_digits_cnn
from tests.helpers import fast_trainer, read_jsonl


@pytest.fixture(scope="module")
def trained():
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def probe(trained):
    _, dm = trained
    return A.select_probe(dm.val_dataloader(), 30, seed=0)


def test_probe_is_stratified_and_fixed_by_seed(trained):
    _, dm = trained
    p1 = A.select_probe(dm.val_dataloader(), 20, seed=3)
    p2 = A.select_probe(dm.val_dataloader(), 20, seed=3)
    p3 = A.select_probe(dm.val_dataloader(), 20, seed=4)
    assert p1.indices == p2.indices and p1.indices != p3.indices
    assert torch.bincount(p1.y, minlength=10).tolist() == [2] * 10
    assert torch.equal(p1.x, dm.split("val").tensors[0][p1.indices])
    with pytest.raises(ValueError, match="n_samples"):
        A.select_probe(dm.val_dataloader(), 10_000)


@pytest.mark.parametrize("method", A.METHODS)
def test_every_method_returns_input_shaped_maps(trained, probe, method):
    net, _ = trained
    a = A.attribute(net, probe.x[:6], probe.y[:6], method, layer=net.features[3])
    assert a.shape == probe.x[:6].shape and torch.isfinite(a).all() and a.abs().sum() > 0
    if method == "grad_cam":
        assert (a >= 0).all()


def test_integrated_gradients_aopc_beats_random_on_trained_digits(trained, probe):
    net, _ = trained
    a = A.attribute(net, probe.x, probe.y, "integrated_gradients", n_steps=16)
    r = A.aopc(net, probe.x, a, probe.y, steps=10)
    assert r["aopc"] > r["aopc_random"] + 0.1, r
    curve = r["aopc_curve"]
    assert curve[0] > curve[-1] and len(curve) == 11  # deleting the evidence lowers the target probability


def test_compare_with_itself_is_identical(trained, probe):
    net, _ = trained
    d = A.compare(net, net, probe)
    assert d.spearman == pytest.approx(1.0) and d.topk == pytest.approx(1.0) and d.agreement == 1.0
    assert set(d.as_metrics()) == {
        "explain/attribution/drift_spearman",
        "explain/attribution/drift_topk",
        "explain/attribution/drift_agreement",
    }


def test_compare_with_a_pruned_copy_moves_the_explanation(trained, probe):
    net, _ = trained
    pruned = copy.deepcopy(net)
    tprune.ln_structured(pruned.features[3], "weight", amount=0.6, n=2, dim=0)
    tprune.l1_unstructured(pruned.classifier, "weight", amount=0.5)
    assert A.fingerprint(pruned) != A.fingerprint(net)
    d = A.compare(net, pruned, probe, target="label")
    assert 0.0 < d.spearman < 0.999 and 0.0 < d.topk < 1.0 and 0.0 <= d.agreement <= 1.0
    assert len(d.per_sample_spearman) == len(probe)
    assert net.training is False and pruned.training is False


def test_rank_agreement_handles_ties_and_shapes():
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    rho, top = A.rank_agreement(a, a.flip(-1) * 0 + a, 0.5)
    assert rho.tolist() == [1.0, 1.0] and top.tolist() == [1.0, 1.0]
    rho, _ = A.rank_agreement(a[:1], torch.tensor([[2.0, 1.0, 0.0, 0.0]]), 0.5)
    assert rho[0] < -0.5
    with pytest.raises(ValueError, match="same shape"):
        A.rank_agreement(a, a[:, :2])


class _PruneAtEpoch(L.Callback):
    """Stands in for a compression callback: re-parametrizes a conv at the end of epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            tprune.ln_structured(pl_module.net.features[3], "weight", amount=0.5, n=2, dim=0)


@pytest.mark.slow
def test_monitor_logs_maps_aopc_and_drift_after_a_structural_change(tmp_path, digits):
    from lightning.pytorch.loggers import WandbLogger

    from lightning_nas.tracking import read_offline_run

    L.seed_everything(0)
    mon = AttributionMonitor(n_samples=10)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    # the monitor comes after the pruner: epoch 1's run sees the change and compares with epoch 0's maps
    trainer = fast_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[_PruneAtEpoch(1), mon])
    trainer.fit(Classifier(DigitsCNN(8)), datamodule=digits)
    files = logger.experiment.dir
    import wandb

    wandb.finish()
    history, summary, _ = read_offline_run(tmp_path)
    rows = [r for r in history if "explain/attribution/aopc" in r]
    assert len(rows) == 3
    assert [r["explain/attribution/structural_changes"] for r in rows] == [0, 1, 1]
    drift = [r for r in history if "explain/attribution/drift_spearman" in r]
    assert len(drift) == 2 and all(-1 <= r["explain/attribution/drift_spearman"] <= 1 for r in drift)
    assert any(r.get("explain/attribution/maps", {}).get("_type") == "image-file" for r in history)
    assert "explain/attribution/aopc" in summary
    assert mon._changes == 1 and mon._reference is not None
    scal = read_jsonl(f"{files}/nas_files/scalars.jsonl")
    assert any("explain/attribution/drift_topk" in s for s in scal)


def test_mark_reference_and_train_mode_restored(tmp_path, digits):
    mon = AttributionMonitor(method="saliency", n_samples=10, faithfulness=False, explain=False)
    module = Classifier(DigitsCNN(4))
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[mon])
    trainer.fit(module, datamodule=digits)
    module.train()
    mon.mark_reference(module)
    torch.manual_seed(1)
    with torch.no_grad():
        module.net.features[0].weight.normal_()
    m = mon.run(trainer, module)
    assert module.training
    assert m["explain/attribution/drift_spearman"] < 0.95
    state = mon.state_dict()
    fresh = AttributionMonitor(method="saliency", n_samples=10)
    fresh.load_state_dict(state)
    assert fresh._probe_indices == mon._probe_indices and fresh._runs == mon._runs


def test_grad_cam_and_vector_inputs_on_a_fit(tmp_path):
    from lightning_nas.data import DigitsDataModule

    cam = AttributionMonitor(method="grad_cam", layer="net.features.3", n_samples=10, target="pred")
    trainer = fast_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, callbacks=[cam])
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=DigitsDataModule(seed=0))
    assert (tmp_path / "nas_files" / "images").exists()
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    mon = AttributionMonitor(method="feature_ablation", n_samples=10)
    trainer = fast_trainer(tmp_path / "flat", limit_train_batches=2, limit_val_batches=1, callbacks=[mon])
    trainer.fit(Classifier(mlp), datamodule=DigitsDataModule(seed=0, flat=True))
    rows = read_jsonl(tmp_path / "flat" / "nas_files" / "tables" / "explain_attribution_top_features.jsonl")[-1]["rows"]
    assert len(rows) == 10 * 5 and rows[0][4].startswith("f")


def test_bad_arguments_fail_in_init():
    with pytest.raises(ValueError, match="method"):
        AttributionMonitor(method="lime")
    with pytest.raises(ValueError, match="every_n_epochs"):
        AttributionMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="n_samples"):
        AttributionMonitor(n_samples=0)
    with pytest.raises(ValueError, match="layer"):
        AttributionMonitor(method="grad_cam")
    with pytest.raises(ValueError, match="target"):
        AttributionMonitor(target="logit")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="grad_cam", layer="net.nope"), "is not a module"),
        (dict(method="grad_cam", layer="net.classifier"), "Conv"),
        (dict(n_samples=10_000), "n_samples"),
    ],
)
def test_bad_model_facing_arguments_fail_at_setup(tmp_path, digits, kwargs, match):
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[AttributionMonitor(**kwargs)])
    module = Classifier(DigitsCNN(4))
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, datamodule=digits)
    assert trainer.global_step == 0


def test_without_validation_data_the_training_inputs_are_explained(tmp_path, digits):
    mon = AttributionMonitor(n_samples=6)
    trainer = fast_trainer(tmp_path, limit_train_batches=2, callbacks=[mon])
    trainer.fit(Classifier(DigitsCNN(4)), train_dataloaders=digits.train_dataloader())
    assert mon.probe.x.shape == (6, 1, 8, 8) and mon._runs == 1


@pytest.fixture
def no_wikitext_download(monkeypatch):
    """LightningTransformer.prepare_data downloads WikiText-2; these tests feed it digits tokens instead."""
    from lightning.pytorch.demos.transformer import LightningTransformer

    monkeypatch.setattr(LightningTransformer, "prepare_data", lambda self: None)


def test_a_model_with_several_inputs_is_explained_over_the_first_without_an_adapter(tmp_path, no_wikitext_download):
    from lightning.pytorch.demos.transformer import LightningTransformer

    from tests._explain_helpers import TokenDigits

    # forward(inputs, target): the tokens are explained, the decoder input is held as the step gave it, and the
    # (batch * T, vocab) output is explained at its last position
    mon = AttributionMonitor(target="pred", n_samples=4, n_steps=4)
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[mon])
    trainer.fit(LightningTransformer(vocab_size=17), datamodule=TokenDigits())
    assert mon.embedding_name == "model.embedding" and mon._last["attr"].shape == (4, 16)
    assert len(mon.probe.rest) == 1 and mon.probe.rest[0].shape == (4, 16)


@pytest.mark.slow
def test_transformer_demo_attributes_over_token_embeddings(tmp_path, no_wikitext_download):
    from lightning.pytorch.demos.transformer import LightningTransformer

    from tests._explain_helpers import TokenDigits, last_token_logits

    mon = AttributionMonitor(target="pred", n_samples=4, forward_fn=last_token_logits, n_steps=4)
    trainer = fast_trainer(tmp_path, limit_train_batches=2, callbacks=[mon])
    model = LightningTransformer(vocab_size=17)
    trainer.fit(model, datamodule=TokenDigits())
    assert mon.embedding_name == "model.embedding" and mon._last["attr"].shape == (4, 16)
    rows = read_jsonl(tmp_path / "nas_files" / "tables" / "explain_attribution_top_features.jsonl")[-1]["rows"]
    assert rows[0][4].startswith("pos") and len(rows) == 4 * 5
    scal = read_jsonl(tmp_path / "nas_files" / "scalars.jsonl")
    assert "explain/attribution/aopc" in scal[-1]


@pytest.mark.slow
@pytest.mark.ddp
def test_explain_callbacks_under_ddp_log_once_from_rank_zero(tmp_path, digits):
    from lightning_nas.callbacks import TrainingDynamics

    cbs = [AttributionMonitor(n_samples=10), TrainingDynamics(every_n_steps=1)]
    trainer = fast_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        callbacks=cbs,
    )
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    scal = read_jsonl(tmp_path / "nas_files" / "scalars.jsonl")
    assert sum("explain/attribution/aopc" in s for s in scal) == 2  # one run per epoch, rank zero only
    assert sum("explain/attribution/drift_spearman" in s for s in scal) == 1
    assert [s["step"] for s in scal if "dynamics/grad_norm_total" in s] == [0, 1, 2, 3]


def test_explain_callbacks_build_from_lightning_cli_yaml():
    from jsonargparse import ArgumentParser

    from lightning_nas.callbacks import ArchitectureView, DecisionPaths, TrainingDynamics

    for cls, init in [
        (
            AttributionMonitor,
            {"method": "saliency", "n_samples": 5, "forward_fn": "tests._explain_helpers.last_token_logits"},
        ),
        (TrainingDynamics, {"every_n_steps": 10}),
        (DecisionPaths, {"top_k": 2}),
        (ArchitectureView, {"max_nodes": 10}),
    ]:
        parser = ArgumentParser()
        parser.add_argument("--cb", type=cls)
        cfg = parser.parse_args(
            ["--cb", json.dumps({"class_path": f"lightning_nas.callbacks.{cls.__name__}", "init_args": init})]
        )
        cb = parser.instantiate_classes(cfg).cb
        assert isinstance(cb, cls)
        for k, v in init.items():
            assert getattr(cb, k) == v if k != "forward_fn" else cb.forward_fn.__name__ == "last_token_logits"


def test_monitor_state_survives_a_checkpoint_resume(tmp_path, digits):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(epochs, ckpt=None):
        L.seed_everything(0)
        mon = AttributionMonitor(method="saliency", n_samples=6, explain=False)
        ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
        trainer = fast_trainer(
            tmp_path,
            max_epochs=epochs,
            limit_train_batches=2,
            limit_val_batches=1,
            enable_checkpointing=True,
            callbacks=[mon, ck],
        )
        trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits, ckpt_path=ckpt)
        return mon

    first = fit(1)
    resumed = fit(2, str(tmp_path / "ck" / "last.ckpt"))
    assert resumed._runs == 2 and resumed._probe_indices == first._probe_indices
    assert torch.equal(resumed._reference["attr"], first._last["attr"])  # the reference came from the checkpoint
