"""Every call into a private API of Lightning, Optuna or W&B goes through here, with the versions it was
checked against (the upper bounds in ``pyproject.toml`` follow this list).

- Lightning 2.4 - 2.6: ``Strategy._setup_model`` (re-wrap a model whose parameters changed under DDP) and the
  fit/validation loops' ``_data_source`` (the dataloaders of this fit, resolved as Lightning resolves them).
- Optuna 4.0 - 5.0: ``study._storage.set_trial_system_attr``, ``FrozenTrial._trial_id`` and
  ``study._get_trials(use_cache=True)`` (what Optuna's own samplers call to store and read per-trial state).
- W&B 0.17 - 0.31: the ``.wandb`` run-file format and ``wandb.proto.wandb_internal_pb2.Record``
  (``tracking/offline.py``; W&B ships no reader for offline runs).
"""

from __future__ import annotations

from typing import Any

import lightning as L

LIGHTNING_CHECKED = ("2.4", "2.6")
OPTUNA_CHECKED = ("4.0", "5.0")
WANDB_CHECKED = ("0.17", "0.31")


def rewrap_model(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Wrap ``pl_module`` again in the strategy's wrapper (DDP), which holds the parameters it was built with."""
    strategy = trainer.strategy
    strategy.model = strategy._setup_model(pl_module)


def train_data_source(trainer: L.Trainer) -> Any:
    """The fit loop's training ``_DataLoaderSource`` (``.is_defined()``, ``.dataloader()``)."""
    return trainer.fit_loop._data_source


def val_data_source(trainer: L.Trainer) -> Any:
    """The validation loop's ``_DataLoaderSource`` of this fit, or ``None`` before Lightning built the loop."""
    return getattr(getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None), "_data_source", None)


def completed_trials(study: Any) -> list:
    """The study's complete trials through Optuna's per-study trial cache (what its samplers read)."""
    from optuna.trial import TrialState

    return list(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True))


def set_trial_system_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Store sampler state on a (frozen) trial, as Optuna's own samplers do."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def wandb_record_class() -> type:
    """The protobuf message of one record of a ``.wandb`` run file."""
    from wandb.proto import wandb_internal_pb2

    # star-imported from the module of the installed protobuf major version, which mypy cannot follow
    return wandb_internal_pb2.Record  # type: ignore[attr-defined]


__all__ = [
    "LIGHTNING_CHECKED",
    "OPTUNA_CHECKED",
    "WANDB_CHECKED",
    "rewrap_model",
    "completed_trials",
    "set_trial_system_attr",
    "train_data_source",
    "val_data_source",
    "wandb_record_class",
]
