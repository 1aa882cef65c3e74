"""The base every lightning_nas callback builds on: one look, one set of rules.

A subclass validates its arguments in ``__init__`` (``lightning_nas._validate``), the model in
``setup()`` (``_validate_model``, called once per fit before the first step), lists the attributes that
make up its resumable state in ``_state_attrs``, and logs through ``self.tracker(trainer)``: rich media on
rank zero only, scalars everywhere a logger listens.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
from torch import nn

from lightning_nas.callbacks._capture import ModelIO
from lightning_nas.tracking import Tracker


class LightningNASCallback(L.Callback):
    """Base class: tracker access, model validation at set-up, and ``state_dict`` discipline.

    Subclasses set ``_state_attrs`` to the names of attributes saved in checkpoints; ``state_dict`` deep-copies
    them and ``load_state_dict`` restores them (override both for anything that needs translation, e.g.
    tensors that must move to a device). ``_validate_model(trainer, pl_module)`` runs in ``setup`` for
    ``fit``; raise ``ValueError`` there with the layer, value and what is allowed.

    Examples:
        A callback of your own: its ``_state_attrs`` go into checkpoints and come back on resume.

        >>> from lightning_nas.callbacks import LightningNASCallback
        >>> class CountSteps(LightningNASCallback):
        ...     _state_attrs = ("steps",)
        ...
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.steps = 0
        ...
        ...     def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ...         self.steps += 1
        ...         self.tracker(trainer).log_scalars({"count/steps": self.steps})
        >>> saved = CountSteps()
        >>> saved.steps = 7
        >>> resumed = CountSteps()
        >>> resumed.load_state_dict(saved.state_dict())
        >>> resumed.steps
        7
    """

    _state_attrs: tuple[str, ...] = ()

    @property
    def state_key(self) -> str:
        return self._generate_state_key()

    def model_io(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ModelIO:
        """The fit's shared view of what the user's steps feed the model (attached until teardown)."""
        return ModelIO.of(pl_module).attach(self, trainer)

    def release_model_io(self, pl_module: L.LightningModule) -> None:
        ModelIO.of(pl_module).detach(self)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release_model_io(pl_module)  # Lightning skips teardown after an exception

    def tracker(self, trainer: L.Trainer) -> Tracker:
        """The trainer's tracking sink (W&B media, logger scalars, files; no-op off rank zero)."""
        return Tracker.from_trainer(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._validate_model(trainer, pl_module)

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the model before the first step; subclasses raise ``ValueError`` with a clear message."""

    def state_dict(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self._state_attrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [n for n in self._state_attrs if n not in state_dict]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: checkpoint state lacks {missing}; was it saved by another "
                "version of this callback?"
            )
        for name in self._state_attrs:
            setattr(self, name, state_dict[name])

    @staticmethod
    def _is_global_zero(trainer: L.Trainer) -> bool:
        return bool(trainer.is_global_zero)

    @staticmethod
    def _broadcast(trainer: L.Trainer, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (identity without a distributed strategy)."""
        return trainer.strategy.broadcast(obj, src=src)

    @staticmethod
    def _named_modules_of(pl_module: nn.Module, types: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in pl_module.named_modules() if isinstance(m, types)]
