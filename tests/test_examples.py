"""Each example on a project we did not write runs end to end and has its real effect."""

import importlib

import pytest
import torch

from tests.helpers import read_jsonl


def _example(name):
    return importlib.import_module(f"examples.{name}")


@pytest.mark.slow
def test_transformer_lm_is_pruned_distilled_and_explained(tmp_path):
    res = _example("transformer_lm").main(max_epochs=1, out_dir=tmp_path, limit_train_batches=6)
    assert res["params_after"] < res["params_before"]
    ff = [m for n, m in res["model"].named_modules() if n.endswith("linear1")]
    assert ff and all(m.out_features == 100 for m in ff)  # 200 -> 100 feed-forward channels
    assert res["model"].model.decoder.out_features == 24  # the vocabulary (the logits) is never pruned
    rows = read_jsonl(res["files"] / "tables" / "explain_attribution_top_features.jsonl")
    assert rows and rows[-1]["rows"][0][4].startswith("pos")  # token positions attributed
    scal = read_jsonl(res["files"] / "scalars.jsonl")
    assert any("explain/attribution/aopc" in s for s in scal)
    hist = res["kd"].history  # teacher-student agreement, over training batches (the demo has no validation_step)
    assert len(hist) == 1 and 0.0 <= hist[0]["distill/agreement"] <= 1.0


@pytest.mark.slow
def test_boring_model_gets_int8_kd_and_dynamics(tmp_path):
    from torch.ao.nn.quantized import Linear as QLinear

    res = _example("boring_model").main(max_epochs=2, out_dir=tmp_path)
    assert any(isinstance(m, QLinear) for m in res["qat"].int8_model.modules())
    assert len(res["kd_losses"]) >= 2 and all(v >= 0 for v in res["kd_losses"])
    assert res["kd"].history == [] or "distill/agreement" in res["kd"].history[-1]
    assert any("dynamics/grad_norm_total" in s for s in res["scalars"])
    assert type(res["model"].l1) is torch.nn.Linear  # the user's module is float again after the fit


@pytest.mark.slow
def test_plain_cnn_distilled_pruned_quantized_in_one_fit(tmp_path):
    from torch.ao.nn.quantized import Conv2d as QConv2d

    from lightning_nas.compress.quantize import int8_onnx_ops

    res = _example("plain_pytorch_cnn").main(max_epochs=2, out_dir=tmp_path, teacher_epochs=2, limit_train_batches=8)
    m = res["measurements"]
    assert m["pruned fp32 (after fit)"].params < 0.5 * m["fp32 student, uncompressed"].params
    assert res["student"].net.body[0].out_channels == 8 and res["student"].net.body[3].out_channels == 16
    assert sum(isinstance(x, QConv2d) for x in res["qat"].int8_model.modules()) == 2
    assert m["pruned int8 (QAT)"].size_bytes < m["pruned fp32 (after fit)"].size_bytes
    assert any(op in int8_onnx_ops(res["onnx_path"].read_bytes()) for op in ("QLinearConv", "ConvInteger"))
    assert len(res["kd"].history) == 2  # KD ran through both epochs, across the pruning and the QAT swap


@pytest.mark.slow
def test_kd_prune_qat_resume_across_the_deferred_qat_swap(tmp_path, digits):
    """QAT swaps at start_epoch when pruning shares the fit; a checkpoint saved after the swap resumes exactly
    (the pruning replay, then the QAT swap, run before the weights load)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning
    from lightning_nas.models import Classifier, DigitsCNN
    from tests.helpers import fast_trainer

    digits.setup("fit")
    train, val = DataLoader(digits.split("train"), batch_size=64), DataLoader(digits.split("val"), batch_size=128)
    x = digits.split("test").tensors[0][:32]

    def run(epochs, root, ckpt=None):
        L.seed_everything(0)
        qat = QuantizationAware(start_epoch=1, freeze_observers_after=1, measure=False, explain=False)
        cbs = [
            KnowledgeDistillation(DigitsCNN(8)),
            StructuredPruning(0.5, start_epoch=0),
            qat,
            ModelCheckpoint(dirpath=root, save_last=True),
        ]
        trainer = fast_trainer(
            root,
            max_epochs=epochs,
            limit_train_batches=3,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            enable_checkpointing=True,
            callbacks=cbs,
        )
        model = Classifier(DigitsCNN(16))
        trainer.fit(model, train, val, ckpt_path=ckpt)
        with torch.no_grad():
            return qat.int8_model(x), model

    full, model = run(3, tmp_path / "a")
    assert model.net.features[0].out_channels == 8  # pruned before QAT, then quantized
    run(2, tmp_path / "b")  # "killed" after epoch 2, after the QAT swap
    resumed, _ = run(3, tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert torch.equal(full, resumed)


def test_deferred_qat_still_rejects_bad_input_before_the_first_step(tmp_path, digits):
    from lightning_nas.callbacks import QuantizationAware, StructuredPruning
    from lightning_nas.models import Classifier, DigitsCNN
    from tests.helpers import fast_trainer

    model = Classifier(DigitsCNN(8))
    w0 = model.net.features[0].weight.detach().clone()
    cbs = [StructuredPruning(0.5), QuantizationAware(start_epoch=1, ignore=["no_such_layer"])]
    with pytest.raises(ValueError, match="ignore"):
        fast_trainer(tmp_path, max_steps=1, callbacks=cbs).fit(model, datamodule=digits)
    assert torch.equal(model.net.features[0].weight, w0)  # failed in setup: no step, no pruning


@pytest.mark.slow
def test_feature_kd_follows_the_layer_that_the_deferred_qat_swap_replaces(tmp_path, digits):
    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning
    from lightning_nas.models import Classifier, DigitsCNN
    from tests.helpers import fast_trainer

    kd = KnowledgeDistillation(DigitsCNN(16), features={"net.features.3": "features.3"})
    qat = QuantizationAware(start_epoch=1, freeze_observers_after=1, measure=False, explain=False)
    prune = StructuredPruning(0.5, ignore=["net.features.3"])  # the distilled layer keeps its width
    trainer = fast_trainer(
        tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[kd, prune, qat]
    )
    model = Classifier(DigitsCNN(8))
    trainer.fit(model, datamodule=digits)
    assert model.net.features[0].out_channels == 4 and model.net.features[3].out_channels == 16
    assert "distill/feature_loss" in trainer.logged_metrics and qat.int8_model is not None
