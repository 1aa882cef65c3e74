"""Fits used by the reliability suite: one function per configuration, returning what the fit needs.

Each config returns a dict with ``module``, ``datamodule``, ``callbacks``, ``max_epochs``, optional
``trainer_kwargs``, optional ``kill_epoch`` (default 1: the process is SIGKILLed at that epoch's second batch,
so the last checkpoint is the end of the epoch before), and ``result(trainer, module, callbacks) -> dict``:
what must be identical between an uninterrupted fit and a killed-and-resumed one (weights, architecture,
masks, int8 outputs). Values are tensors (compared to 1e-6) or plain objects (compared with ``==``).
Adding a configuration is adding one function to ``CONFIGS``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_nas import space
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN

_SMALL = {"limit_train_batches": 4, "limit_val_batches": 2}  # sanity check on: resume must survive it


def _conv(c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.BatchNorm2d(c), nn.ReLU())


class SearchNet(nn.Module):
    """A tiny CNN with two ``LayerChoice``s (the net a user would hand to the one-shot callbacks)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())
        self.b1 = space.LayerChoice({"conv3": _conv(c, 3), "conv1": _conv(c, 1), "skip": nn.Identity()}, label="b1")
        self.b2 = space.LayerChoice({"conv3": _conv(c, 3), "skip": nn.Identity()}, label="b2")
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b2(self.b1(self.stem(x))).mean((2, 3)))


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"w/{k}": v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def _channels(module: nn.Module) -> dict[str, int]:
    out = {}
    for n, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[n] = (m.in_features, m.out_features)
    return out


def _fixed_inputs() -> torch.Tensor:
    return DigitsDataModule().split("test").tensors[0][:32]


def _data() -> DigitsDataModule:
    return DigitsDataModule(batch_size=64)


def plain() -> dict[str, Any]:
    """No callback: proves the harness itself resumes exactly (data order, optimizer state)."""
    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[],
        max_epochs=3,
        trainer_kwargs=_SMALL,
        result=lambda trainer, module, callbacks: _weights(module),
    )


def _oneshot(nas: L.Callback) -> dict[str, Any]:
    def result(trainer, module, callbacks):
        nas = callbacks[0]
        out: dict[str, Any] = {"arch": nas.export(), **_weights(module)}
        out.update({f"alpha/{k}": v.detach().clone() for k, v in nas._supernet.alpha.items()})
        if hasattr(nas, "scored"):
            out["scored"] = [(a, round(s, 6)) for a, s in nas.scored]
        return out

    return dict(
        module=Classifier(SearchNet()),
        datamodule=_data(),
        callbacks=[nas],
        max_epochs=3,
        trainer_kwargs=_SMALL,
        result=result,
    )


def darts() -> dict[str, Any]:
    from lightning_nas.callbacks import DifferentiableNAS

    return _oneshot(DifferentiableNAS(mode="darts", seed=3, ablation_batches=1, remedy="darts-"))


def gdas() -> dict[str, Any]:
    from lightning_nas.callbacks import DifferentiableNAS

    return _oneshot(DifferentiableNAS(mode="gdas", seed=3, ablation_batches=1))


def spos() -> dict[str, Any]:
    from lightning_nas.callbacks import SubnetSampling

    return _oneshot(SubnetSampling(population=3, generations=1, calib_batches=1, eval_batches=1, seed=3))


def structured_pruning() -> dict[str, Any]:
    """Gradual pruning at epochs 1 and 2; killed in epoch 2: the resume replays epoch 1's pruning."""
    from lightning_nas.callbacks import StructuredPruning

    cb = StructuredPruning(amount=0.5, schedule="linear", start_epoch=1, end_epoch=2, explain=False)
    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        kill_epoch=2,
        trainer_kwargs=_SMALL,
        result=lambda trainer, module, callbacks: {"channels": _channels(module), **_weights(module)},
    )


def magnitude_pruning() -> dict[str, Any]:
    from lightning_nas.callbacks import MagnitudePruning

    cb = MagnitudePruning(amount=0.6, schedule="linear", start_epoch=1, end_epoch=2, make_permanent=False)

    def result(trainer, module, callbacks):
        return {f"mask/{k}": v.clone() for k, v in module.state_dict().items() if k.endswith("weight_mask")} | _weights(
            module
        )

    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        kill_epoch=2,
        trainer_kwargs=_SMALL,
        result=result,
    )


def lowrank() -> dict[str, Any]:
    """Factorized at epoch 1, killed in epoch 2: the resume rebuilds the factor pairs before loading weights."""
    from lightning_nas.callbacks import LowRankFactorization

    cb = LowRankFactorization(energy=0.8, start_epoch=1, min_saving=0.0)
    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        kill_epoch=2,
        trainer_kwargs=_SMALL,
        result=lambda trainer, module, callbacks: {
            "ranks": dict(callbacks[0].ranks),
            "channels": _channels(module),
            **_weights(module),
        },
    )


def _int8(qat: L.Callback, module: nn.Module) -> dict[str, Any]:
    from lightning_nas.compress.quantize import allow_int8_kernels, quant_state

    with torch.no_grad(), allow_int8_kernels():
        out = qat.int8_model(_fixed_inputs())
    return {
        "int8_out": out,
        "qat_steps": qat.qat_steps,
        **{f"q/{k}": v.float() for k, v in quant_state(qat.qat_model).items()},
    }


def qat() -> dict[str, Any]:
    """QAT from epoch 1, observers frozen after 1 QAT epoch; killed mid-QAT (epoch 2, observers frozen)."""
    from lightning_nas.callbacks import QuantizationAware

    cb = QuantizationAware(start_epoch=1, freeze_observers_after=1, measure=False, explain=False)
    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        kill_epoch=2,
        trainer_kwargs=_SMALL,
        result=lambda trainer, module, callbacks: _int8(callbacks[0], module) | _weights(module),
    )


def _teacher() -> nn.Module:
    torch.manual_seed(123)
    return DigitsCNN(16)


def kd() -> dict[str, Any]:
    """Logit + feature distillation: the adapter (trained by the user's optimizer) resumes too."""
    from lightning_nas.callbacks import KnowledgeDistillation

    cb = KnowledgeDistillation(_teacher(), temperature=2.0, features={"net.features.0": "features.0"}, explain=True)
    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        trainer_kwargs=_SMALL,
        result=lambda trainer, module, callbacks: (
            _weights(module) | {f"adapter/{k}": v.clone() for k, v in callbacks[0].adapters.state_dict().items()}
        ),
    )


def attribution() -> dict[str, Any]:
    """Drift of attributions is measured against the reference kept in the checkpoint."""
    from lightning_nas.callbacks import AttributionMonitor

    cb = AttributionMonitor(method="saliency", n_samples=8, faithfulness=False, explain=False)

    def result(trainer, module, callbacks):
        a = callbacks[0]
        return {
            "runs": a._runs,
            "changes": a._changes,
            "probe": list(a._probe_indices),
            "ref_attr": a._reference["attr"],
            "last_attr": a._last["attr"],
            **_weights(module),
        }

    return dict(
        module=Classifier(DigitsCNN(8)),
        datamodule=_data(),
        callbacks=[cb],
        max_epochs=3,
        trainer_kwargs=_SMALL,
        result=result,
    )


def search_stage(max_epochs: int = 2, **trainer_kwargs: Any) -> tuple[dict[str, str], nn.Module]:
    """Combination stage 1, a fit of its own: DARTS on ``SearchNet``; returns the architecture and the searched
    net frozen to it (a plain ``nn.Module``, the teacher and the student of the next stages)."""
    from lightning_nas.callbacks import DifferentiableNAS

    nas = DifferentiableNAS(mode="darts", seed=3, ablation_batches=1)
    module = Classifier(SearchNet())
    opts = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
        **_SMALL,
    )
    opts.update(trainer_kwargs)
    with tempfile.TemporaryDirectory() as tmp:  # the file sink writes under default_root_dir
        L.Trainer(max_epochs=max_epochs, callbacks=[nas], default_root_dir=tmp, **opts).fit(module, datamodule=_data())
    arch = nas.export()
    return arch, space.freeze(module.net, arch)


def combo() -> dict[str, Any]:
    """Search + prune + QAT + KD. The NAS callbacks hold the supernet until ``on_train_end`` (they have no end
    epoch), and ``QuantizationAware`` swaps in the FX fake-quant model in ``setup`` (per-channel observers of
    fixed size, which a later channel removal breaks), so the closest combination is three fits:

    1. ``search_stage`` (DARTS, uninterrupted, deterministic, so rerun identically by the resumed process);
    2. THE KILLED FIT: ``StructuredPruning`` (epoch 1) + ``KnowledgeDistillation`` (teacher: the searched
       net) on the frozen architecture; killed in epoch 2, i.e. after the pruning, mid-fine-tune;
    3. in ``result``: ``QuantizationAware`` + ``KnowledgeDistillation`` on the pruned net, to int8.
    """
    import copy

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning

    arch, net = search_stage()
    teacher = copy.deepcopy(net)
    prune = StructuredPruning(amount=0.5, start_epoch=1, explain=False)
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False)

    def result(trainer, module, callbacks):
        qat = QuantizationAware(start_epoch=0, freeze_observers_after=1, measure=False, explain=False)
        kd2 = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False)
        L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            deterministic=True,
            default_root_dir=trainer.default_root_dir,
            callbacks=[kd2, qat],
            **_SMALL,
        ).fit(module, datamodule=_data())
        return {
            "arch": arch,
            "channels": _channels(module),
            "pruned_params": sum(p.numel() for p in module.parameters()),
            **_weights(module),
            **_int8(qat, module),
        }

    return dict(
        module=Classifier(net),
        datamodule=_data(),
        callbacks=[prune, kd],
        max_epochs=3,
        kill_epoch=2,
        trainer_kwargs=_SMALL,
        result=result,
    )


def qat_defers_swap() -> bool:
    """Whether ``QuantizationAware`` waits for ``start_epoch`` to install its fake-quant model when pruning or
    low-rank share the fit (the int-examples branch adds this; before it, they cannot share one fit)."""
    from lightning_nas.callbacks import QuantizationAware

    return hasattr(QuantizationAware, "_swap")


def combo_one_fit() -> dict[str, Any]:
    """Search (own fit) then ONE fit of StructuredPruning (epoch 1) + KD + QuantizationAware (from epoch 2,
    observers frozen after 1 QAT epoch), killed in epoch 3: mid-QAT, after pruning. The resume must replay the
    pruning, then swap in the QAT model, then load the weights and quantizer buffers."""
    import copy

    from lightning_nas.callbacks import KnowledgeDistillation, QuantizationAware, StructuredPruning

    arch, net = search_stage()
    teacher = copy.deepcopy(net)
    prune = StructuredPruning(amount=0.5, start_epoch=1, explain=False)
    kd = KnowledgeDistillation(teacher, temperature=2.0, alpha=0.5, explain=False)
    qat = QuantizationAware(start_epoch=2, freeze_observers_after=1, measure=False, explain=False)

    def result(trainer, module, callbacks):
        return {"arch": arch, "channels": _channels(module), **_weights(module), **_int8(qat, module)}

    return dict(
        module=Classifier(net),
        datamodule=_data(),
        callbacks=[prune, kd, qat],
        max_epochs=4,
        kill_epoch=3,
        trainer_kwargs=_SMALL,
        result=result,
    )


CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "plain": plain,
    "darts": darts,
    "gdas": gdas,
    "spos": spos,
    "structured_pruning": structured_pruning,
    "magnitude_pruning": magnitude_pruning,
    "lowrank": lowrank,
    "qat": qat,
    "kd": kd,
    "attribution": attribution,
    "combo": combo,
    "combo_one_fit": combo_one_fit,
}
