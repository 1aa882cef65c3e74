"""2-rank DDP (ddp_spawn): KD + QAT in one fit give identical weights, scales and int8 outputs on both ranks."""

import lightning as L
import pytest
import torch

from tests.helpers import fast_trainer


class _Dump(L.Callback):
    """Runs after QuantizationAware's on_train_end: each rank saves what it ended with."""

    def __init__(self, qat, out_dir, x, kd=None):
        self.qat, self.out_dir, self.x, self.kd = qat, out_dir, x, kd

    def on_train_end(self, trainer, pl_module):
        from lightning_nas.compress.quantize import quant_state

        with torch.no_grad():
            out = self.qat.int8_model(self.x)
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        torch.save(
            {
                "int8_out": out,
                "weights": weights,
                "quant": quant_state(self.qat.qat_model),
                "agreement": [] if self.kd is None else list(self.kd.history),
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
@pytest.mark.ddp
def test_kd_and_qat_identical_on_two_ranks(tmp_path):
    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import Classifier, DigitsCNN

    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32)
    x = dm.split("test").tensors[0][:16]
    teacher = DigitsCNN(8)
    qat = QuantizationAware(freeze_observers_after=1, measure=False, explain=False)
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5)
    trainer = fast_trainer(
        tmp_path,
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[kd, qat, _Dump(qat, str(tmp_path), x, kd)],
    )
    trainer.fit(Classifier(DigitsCNN(8)), datamodule=dm)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["weights"].keys() == r1["weights"].keys() and r0["weights"]
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    for k in r0["quant"]:
        assert torch.equal(r0["quant"][k], r1["quant"][k]), k
    assert torch.equal(r0["int8_out"], r1["int8_out"])
    # the agreement metric sums both ranks' validation batches: every rank logs the same epoch numbers
    assert len(r0["agreement"]) == 2 and r0["agreement"] == r1["agreement"]
    # KD actually trained the student toward something: the outputs are finite and not all equal
    assert torch.isfinite(r0["int8_out"]).all() and r0["int8_out"].std() > 0
