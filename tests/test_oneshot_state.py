"""Exact resume from a checkpoint, and identical decisions on two DDP ranks."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_nas.callbacks import DifferentiableNAS, SubnetSampling
from lightning_nas.models import Classifier
from tests.helpers import SmallSpace, fast_trainer


def _loaders(digits):
    # no shuffling: an interrupted and an uninterrupted fit then see the same batches in the same order
    train = DataLoader(digits.split("train"), batch_size=64, shuffle=False)
    val = DataLoader(digits.split("val"), batch_size=64, shuffle=False)
    return train, val


class _Kill(L.Callback):
    """Ends the fit after ``n`` epochs, the way a killed job ends: the last checkpoint is what survives."""

    def __init__(self, n):
        self.n = n

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.n:
            trainer.should_stop = True


def _fit(tmp_path, digits, mode, max_epochs, ckpt_path=None, save=False, kill_after=None):
    torch.manual_seed(0)
    module = Classifier(SmallSpace())
    if mode == "spos":
        nas = SubnetSampling(population=3, generations=1, calib_batches=1, eval_batches=1, seed=3)
    else:
        nas = DifferentiableNAS(mode=mode, seed=3, ablation_batches=0, remedy="darts-" if mode == "darts" else "none")
    callbacks = [nas] + ([_Kill(kill_after)] if kill_after else [])
    if save:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0))
    trainer = fast_trainer(
        tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        callbacks=callbacks,
        enable_checkpointing=save,
    )
    train, val = _loaders(digits)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    return nas, module


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["darts", "gdas", "spos"])
def test_resume_exports_the_same_architecture(tmp_path, digits, mode):
    full, full_module = _fit(tmp_path / "full", digits, mode, 4)
    _fit(tmp_path / "part", digits, mode, 4, save=True, kill_after=2)
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert last.exists()
    resumed, resumed_module = _fit(tmp_path / "resumed", digits, mode, 4, ckpt_path=str(last))
    for lb in full._supernet.labels:
        assert torch.equal(full._supernet.alpha[lb], resumed._supernet.alpha[lb]), lb
    assert full.export() == resumed.export()
    assert full._supernet.tau == resumed._supernet.tau
    assert torch.equal(full._supernet.generator.get_state(), resumed._supernet.generator.get_state())
    assert [h["epoch"] for h in resumed.history] == ([] if mode == "spos" else [0, 1, 2, 3])
    if mode == "spos":
        assert full.scored == resumed.scored
    for (k, v), (k2, v2) in zip(full_module.state_dict().items(), resumed_module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_state_dict_round_trip(tmp_path, digits):
    nas, _ = _fit(tmp_path, digits, "gdas", 1)
    state = nas.state_dict()
    fresh = DifferentiableNAS(mode="gdas")
    fresh.load_state_dict(state)  # before setup: kept until the supernet exists
    assert fresh.state_dict()["supernet"]["tau"] == state["supernet"]["tau"]
    with pytest.raises(KeyError, match="supernet"):
        _fit_with_state(tmp_path, digits, {"history": []})


def _fit_with_state(tmp_path, digits, state):
    nas = SubnetSampling()
    nas.load_state_dict(state)
    fast_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, callbacks=[nas]).fit(
        Classifier(SmallSpace()), datamodule=digits
    )


class _Dump(L.Callback):
    """Saves, on each rank, alpha and the path of every step."""

    def __init__(self, nas, out):
        self.nas, self.out, self.paths = nas, out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sn = self.nas._supernet
        self.paths.append(
            {lb: sn.names[lb][int(torch.argmax(sn._gumbel[lb] + sn.alpha[lb].detach()))] for lb in sn.labels}
        )

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "alpha": {k: v.detach() for k, v in self.nas._supernet.alpha.items()},
                "paths": self.paths,
                "arch": self.nas.export(),
            },
            f"{self.out}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_hold_identical_alpha_and_paths(tmp_path, digits):
    from lightning.pytorch.strategies import DDPStrategy

    nas = DifferentiableNAS(mode="gdas", ablation_batches=1)  # seed drawn on rank 0 and broadcast
    trainer = fast_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        devices=2,
        strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True),
        callbacks=[nas, _Dump(nas, tmp_path)],
    )
    trainer.fit(Classifier(SmallSpace()), datamodule=digits)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["arch"] == r1["arch"] and r0["paths"] == r1["paths"] and len(r0["paths"]) == 3
    for lb in r0["alpha"]:
        assert torch.equal(r0["alpha"][lb], r1["alpha"][lb])
        assert float(r0["alpha"][lb].abs().max()) > 0


def test_gdas_under_ddp_without_unused_parameters_is_refused(tmp_path, digits):
    nas = DifferentiableNAS(mode="gdas")

    class FakeStrategy:
        _ddp_kwargs = {}

    class FakeTrainer:
        world_size = 2
        strategy = FakeStrategy()

    with pytest.raises(ValueError, match="find_unused_parameters=True"):
        nas._validate_model(FakeTrainer(), Classifier(SmallSpace()))
