"""Stop a bad trial early: report the monitored metric to the Optuna trial after every validation.

A tiny own callback instead of ``optuna_integration.PyTorchLightningPruningCallback``: that package is not
a dependency here, and its callback targets ``pytorch_lightning`` / ``lightning.pytorch`` versions it pins;
this one is ten lines on the public ``lightning`` 2.x hooks.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from typing_extensions import override

from lightning_nas._validate import check_type


class TrialPruningCallback(L.Callback):
    """Report ``monitor`` to ``trial`` after each validation run; stop the fit when the pruner says so.

    The step of each report is the index of the validation run (0, 1, 2, ...), so trials with different batch
    sizes stay comparable. When ``trial.should_prune()`` the callback sets ``trainer.should_stop`` (Lightning
    tears the fit down cleanly) and ``pruned`` becomes ``True``; the search driver then raises
    ``optuna.TrialPruned``. The sanity-check validation is not reported. Under DDP rank zero reports and
    every rank follows its decision (broadcast), so all ranks stop together.

    Args:
        trial: an ``optuna.trial.Trial`` (or a ``SearchTrial``; its Optuna trial is used).
        monitor: a key of ``trainer.callback_metrics`` (e.g. ``"val_acc"``).

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import optuna
        >>> from lightning_nas.search import TrialPruningCallback
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner())
        >>> trial = study.ask()
        >>> stopper = TrialPruningCallback(trial, monitor="val_acc")
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[stopper])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> stopper.pruned  # the first trial has nothing to be compared with
        False
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        super().__init__()
        check_type("monitor", monitor, str)
        self.trial = getattr(trial, "optuna_trial", trial)
        self.monitor = monitor
        self.pruned = False
        self.pruned_at: int | None = None
        self._reports = 0

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if stage == "fit" and not is_overridden("validation_step", pl_module):
            raise ValueError(
                f"TrialPruningCallback reports {self.monitor!r} after each validation, but "
                f"{type(pl_module).__name__} has no validation_step; add one that logs {self.monitor!r} "
                "or search without a pruner"
            )

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ValueError(
                f"TrialPruningCallback: monitor {self.monitor!r} was not logged in validation; logged "
                f"keys: {sorted(trainer.callback_metrics)}"
            )
        step = self._reports
        self._reports += 1
        prune = False
        if trainer.is_global_zero:  # one report per validation; every rank follows rank zero's decision
            self.trial.report(float(value), step=step)
            prune = bool(self.trial.should_prune())
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned, self.pruned_at = True, step
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reports": self._reports, "pruned": self.pruned, "pruned_at": self.pruned_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._reports, self.pruned, self.pruned_at = (
            state_dict["reports"],
            state_dict["pruned"],
            state_dict["pruned_at"],
        )
