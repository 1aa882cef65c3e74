"""Fits used by the reliability suite: one function per configuration, returning what the fit needs.

Each config returns a dict with ``module``, ``datamodule``, ``callbacks``, ``max_epochs``, optional
``trainer_kwargs``, and ``result(trainer, module, callbacks) -> dict[str, Tensor]``: what must be identical
between an uninterrupted fit and a killed-and-resumed one (weights, architecture, masks, int8 outputs).
Adding a configuration is adding one function to ``CONFIGS``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"w/{k}": v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def plain() -> dict[str, Any]:
    """No callback: proves the harness itself resumes exactly (data order, optimizer state)."""
    return dict(module=Classifier(DigitsCNN(8)), datamodule=DigitsDataModule(batch_size=64), callbacks=[],
                max_epochs=3, result=lambda trainer, module, callbacks: _weights(module))


CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {"plain": plain}
