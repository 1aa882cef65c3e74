"""2-rank DDP (``ddp_spawn``, CPU) with the combination search -> prune + KD -> QAT + KD: both ranks take the
same decisions (architecture, alpha, removed channels, quantization scales, int8 outputs) and media are logged
once (rank zero).

The combination is three fits (see ``tests/reliability/configs.combo`` for why it cannot be one). Each rank
writes what it ended with from ``on_fit_end``; the test compares the files.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_nas import space
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier
from tests.helpers import fast_trainer
from tests.reliability.configs import SearchNet, _channels


class _Dump(L.Callback):
    """Each rank saves ``self.what(trainer, pl_module)`` to ``<out>/<stage>-rank<r>.pt`` at fit end (picklable
    for ``ddp_spawn``: no lambdas; it holds the callbacks whose decisions it records)."""

    stage = ""

    def __init__(self, out: Path, cb: L.Callback, x: torch.Tensor | None = None) -> None:
        self.out, self.cb, self.x = str(out), cb, x

    def on_fit_end(self, trainer, pl_module):
        torch.save(self.what(trainer, pl_module), f"{self.out}/{self.stage}-rank{trainer.global_rank}.pt")


class _DumpSearch(_Dump):
    stage = "search"

    def what(self, trainer, m):
        return {
            "arch": self.cb.export(),
            "weights": _weights(m),
            "alpha": {k: v.detach().cpu() for k, v in self.cb._supernet.alpha.items()},
        }


class _DumpPrune(_Dump):
    stage = "prune"

    def what(self, trainer, m):
        return {
            "channels": _channels(m),
            "weights": _weights(m),
            "net": m.net,
            "steps": [s for r in self.cb.records for s in r["steps"]],
        }


class _DumpQAT(_Dump):
    stage = "qat"

    def what(self, trainer, m):
        from lightning_nas.compress.quantize import allow_int8_kernels, quant_state

        with torch.no_grad(), allow_int8_kernels():
            out = self.cb.int8_model(self.x)
        return {"int8_out": out, "quant": quant_state(self.cb.qat_model), "weights": _weights(m)}


def _ranks(out: Path, stage: str) -> tuple[dict, dict]:
    return tuple(torch.load(out / f"{stage}-rank{r}.pt", weights_only=False) for r in (0, 1))


def _same(a, b, where: str) -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.nn.Module):
        _same(a.state_dict(), b.state_dict(), where)
    else:
        assert a == b, where


def _weights(m):
    return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


def _trainer(root: Path, callbacks, **kw):
    opts = dict(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    opts.update(kw)
    return fast_trainer(root, **opts)


@pytest.mark.slow
@pytest.mark.ddp
def test_search_prune_qat_kd_identical_on_two_ranks_and_media_once(tmp_path):
    from lightning_nas.callbacks import DifferentiableNAS, KnowledgeDistillation, QuantizationAware, StructuredPruning

    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32)
    x = dm.split("test").tensors[0][:16]

    # 1. search (DARTS: full mixture, so plain DDP; GDAS/SPOS need find_unused_parameters=True)
    nas = DifferentiableNAS(mode="darts", seed=3, ablation_batches=1)
    searched = Classifier(SearchNet())
    dump = _DumpSearch(tmp_path, nas)
    _trainer(tmp_path / "search", [nas, dump]).fit(searched, datamodule=dm)
    r0, r1 = _ranks(tmp_path, "search")
    _same(r0, r1, "search")
    # the main process got rank 0's weights; the architecture comes from the ranks' files (ddp_spawn)
    net = space.freeze(searched.net, r0["arch"])
    teacher = space.freeze(searched.net, r0["arch"])

    # 2. structured pruning + KD (rank 0 picks the channels and broadcasts them)
    prune = StructuredPruning(amount=0.5, start_epoch=1, explain=False)
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=True)
    dump = _DumpPrune(tmp_path, prune)
    _trainer(tmp_path / "prune", [prune, kd, dump], max_epochs=3).fit(Classifier(net), datamodule=dm)
    r0, r1 = _ranks(tmp_path, "prune")
    _same({k: v for k, v in r0.items() if k != "net"}, {k: v for k, v in r1.items() if k != "net"}, "prune")
    assert r0["steps"], "nothing was pruned"
    full = _channels(Classifier(net))
    assert any(r0["channels"][k] != full[k] for k in full), (r0["channels"], full)

    # 3. QAT + KD on the pruned net (rank 0's; the main process holds a densified copy under ddp_spawn)
    pruned = r0["net"]
    qat = QuantizationAware(start_epoch=0, freeze_observers_after=1, measure=False, explain=False)
    kd2 = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False)
    _trainer(tmp_path / "qat", [kd2, qat, _DumpQAT(tmp_path, qat, x)]).fit(Classifier(pruned), datamodule=dm)
    r0, r1 = _ranks(tmp_path, "qat")
    _same(r0, r1, "qat")
    assert r0["quant"] and torch.isfinite(r0["int8_out"]).all() and r0["int8_out"].std() > 0

    # media once: only rank 0 writes the file sink, and no media (kind, key, step) is recorded twice
    for stage, must in (("search", {"nas/decisions", "nas/ablation"}), ("prune", {"distill/per_class"})):
        index = tmp_path / stage / "nas_files" / "index.jsonl"
        rows = [json.loads(line) for line in index.read_text().splitlines()]
        # media (tables, images, series, histograms): one record per key and step. (Scalars may repeat a step
        # legitimately: pruning logs channel counts at the end of an epoch and again after pruning, same step.)
        counts = collections.Counter((r["kind"], r["key"], r["step"]) for r in rows if r["kind"] != "scalar")
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
        assert must <= {r["key"] for r in rows}, sorted({r["key"] for r in rows})
        assert sum(r["key"] == "nas/decisions" for r in rows) == (1 if stage == "search" else 0)
