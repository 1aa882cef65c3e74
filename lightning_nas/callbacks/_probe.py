"""Shared by the explain callbacks: find the validation data, pick the probe, check the forward contract."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_nas.explain._attribution_utils import forward_of, required_inputs
from lightning_nas.explain.attribution import Probe, select_probe


def val_data(trainer: L.Trainer, pl_module: L.LightningModule, owner: str) -> Any:
    """The validation dataloader(s) of this fit, before the val loop loads them; ``ValueError`` if none."""
    source = getattr(getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None), "_data_source", None)
    data = None
    try:  # Lightning's own source resolves fit(val_dataloaders=...), a datamodule and the module's hook alike
        if source is not None and source.is_defined():
            data = source.dataloader()
    except Exception:  # noqa: BLE001 - fall back to the public paths below
        data = None
    if data is None and trainer.datamodule is not None and _overrides(trainer.datamodule, "val_dataloader"):
        data = trainer.datamodule.val_dataloader()
    if data is None and _overrides(pl_module, "val_dataloader"):
        data = pl_module.val_dataloader()
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], torch.Tensor):
        data = data[0]  # several val loaders: the first one
    if isinstance(data, dict):
        data = next(iter(data.values()), None)
    if data is None:
        raise ValueError(f"{owner} needs validation data for its probe set: pass `val_dataloaders` to "
                         "`trainer.fit`, or a datamodule with `val_dataloader()`")
    return data


def _overrides(obj: Any, name: str) -> bool:
    fn = getattr(type(obj), name, None)
    base = getattr(L.LightningDataModule, name, None) if isinstance(obj, L.LightningDataModule) else \
        getattr(L.LightningModule, name, None)
    return fn is not None and fn is not base


def resolve_probe(trainer: L.Trainer, pl_module: L.LightningModule, owner: str, n_samples: int, seed: int,
                  batch_fn: Callable | None) -> Probe:
    return select_probe(val_data(trainer, pl_module, owner), n_samples, seed=seed, batch_fn=batch_fn)


def check_forward(pl_module: nn.Module, probe: Probe, forward_fn: Callable | None, owner: str) -> torch.Tensor:
    """Run the model once on two probe samples; it must return ``(batch, classes)`` logits."""
    if forward_fn is None and required_inputs(pl_module) > 1:
        raise ValueError(f"{owner}: {type(pl_module).__name__}.forward takes {required_inputs(pl_module)} inputs; "
                         "pass `forward_fn=lambda model, x: ...` returning (batch, classes) logits")
    was = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            out = forward_of(pl_module, forward_fn)(probe.x[:2].to(pl_module.device))
    finally:
        pl_module.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != min(2, len(probe)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{owner}: the model must map a batch to (batch, classes) logits, got {shape}; pass "
                         "`forward_fn=lambda model, x: ...` to adapt it")
    return out


def find_module(pl_module: nn.Module, name: str, argname: str) -> nn.Module:
    modules = dict(pl_module.named_modules())
    if name not in modules:
        raise ValueError(f"`{argname}`={name!r} is not a module of {type(pl_module).__name__}; some that are: "
                         f"{[n for n in modules if n][:12]}")
    return modules[name]


def find_embedding(pl_module: nn.Module, name: str | None) -> nn.Module:
    if name is not None:
        mod = find_module(pl_module, name, "embedding")
        if not isinstance(mod, nn.Embedding):
            raise ValueError(f"`embedding`={name!r} must name an nn.Embedding, got {type(mod).__name__}")
        return mod
    embs = [n for n, m in pl_module.named_modules() if isinstance(m, nn.Embedding)]
    if len(embs) != 1:
        raise ValueError(f"token inputs need the nn.Embedding to attribute over: pass `embedding=` (found {embs})")
    return dict(pl_module.named_modules())[embs[0]]
