"""2-rank DDP (ddp_spawn, CPU): every rank removes the same channels; the main process gets an equivalent model."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_nas.callbacks import StructuredPruning
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer


class _RankProbe(L.Callback):
    def __init__(self, out_dir, x):
        self.out_dir, self.x = str(out_dir), x

    def on_train_end(self, trainer, pl_module):
        pl_module.eval()
        with torch.no_grad():
            logits = pl_module(self.x.to(pl_module.device)).tolist()
        rec = {
            "channels": [pl_module.net.features[0].out_channels, pl_module.net.features[3].out_channels],
            "weights": {k: v.double().sum().item() for k, v in pl_module.state_dict().items()},
            "steps": [s for r in trainer.callbacks[0].records for s in r["steps"]],
            "logits": logits,
        }
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(rec, f)


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_remove_the_same_channels(tmp_path, digits):
    L.seed_everything(0)
    x = digits.example_input(16)
    module = Classifier(DigitsCNN(16))
    # Taylor importance uses gradients of rank-local batches (all-reduced by DDP); rank 0 decides and broadcasts
    cb = StructuredPruning(0.5, importance="taylor", schedule="linear", start_epoch=1, end_epoch=2)
    trainer = fast_trainer(
        tmp_path,
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=0,
        callbacks=[cb, _RankProbe(tmp_path, x)],
    )
    trainer.fit(module, DataLoader(digits.split("train"), batch_size=32, shuffle=True))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["channels"] == r1["channels"] == [8, 16]
    assert r0["steps"] == r1["steps"] and len(r0["steps"]) >= 2
    assert r0["weights"].keys() == r1["weights"].keys()
    for k in r0["weights"]:
        assert r0["weights"][k] == pytest.approx(r1["weights"][k], rel=1e-5, abs=1e-6), k
    # the main process holds the unpruned module: it received a zero-padded equivalent of the pruned one
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), torch.tensor(r0["logits"]), atol=1e-4, rtol=1e-4)
