"""``TrialFit``: the Optuna objective of ``run`` — one ordinary Lightning fit of ``build(trial)``, then the
objectives read from the fit's logged metrics and measured costs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_nas.search.multitrial._objectives import COSTS, evaluate, example_input_of
from lightning_nas.search.multitrial._pruning import TrialPruningCallback
from lightning_nas.search.multitrial._trial import SearchTrial, build_resolved, is_datamodule

_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class Surplus(Exception):
    """This trial would exceed the shared budget (another worker started the last one first)."""


def check_budget(study: optuna.Study, ot: optuna.trial.Trial, n_trials: int) -> None:
    """Raise ``Surplus`` when ``n_trials`` counted trials numbered before ``ot`` already exist."""
    ahead = study.get_trials(deepcopy=False, states=_COUNTED + (TrialState.RUNNING,))
    if sum(t.number < ot.number and "duplicate_of" not in t.user_attrs for t in ahead) >= n_trials:
        ot.set_user_attr("surplus", True)
        raise Surplus(f"trial {ot.number}: the study already has {n_trials} trials")


def find_duplicate(study: optuna.Study, params: Mapping[str, Any], before: int | None = None) -> FrozenTrial | None:
    """The first complete trial of ``study`` (numbered below ``before``, if given) whose parameters equal
    ``params``, or ``None``: what ``run(..., dedup=True)`` answers a repeated configuration with.

    Examples:
        >>> import optuna
        >>> from lightning_nas.search.multitrial import find_duplicate
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> study.enqueue_trial({"op": "conv"})
        >>> study.optimize(lambda t: float(t.suggest_categorical("op", ["conv", "skip"]) == "conv"), n_trials=1)
        >>> find_duplicate(study, {"op": "conv"}).number
        0
        >>> find_duplicate(study, {"op": "skip"}) is None
        True
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (before is None or t.number < before) and t.params == dict(params):
            return t
    return None


class TrialFit:
    """Callable ``trial -> objective value(s)``; collects the W&B run folders of the trials in ``wandb_runs``."""

    def __init__(
        self,
        *,
        study: optuna.Study,
        build: Callable[[SearchTrial], L.LightningModule],
        datamodule: Any,
        objectives: dict[str, str],
        n_trials: int,
        pruner: optuna.pruners.BasePruner,
        trainer_kwargs: dict[str, Any],
        wandb_mode: str | None,
        wandb_project: str,
        out: Path,
        example_input: Any,
        dedup: bool,
    ) -> None:
        self.study, self.build, self.datamodule, self.objs = study, build, datamodule, objectives
        self.n_trials, self.pruner, self.trainer_kwargs = n_trials, pruner, trainer_kwargs
        self.wandb_mode, self.wandb_project, self.out = wandb_mode, wandb_project, out
        self.example_input, self.dedup = example_input, dedup
        self.wandb_runs: list[str] = []
        self._x: dict[str, Any] = {}  # the example input of cost objectives, taken once
        self._value_labels: dict[str, list[Any]] = {}

    def __call__(self, ot: optuna.trial.Trial) -> float | tuple[float, ...]:
        if not self.dedup:
            check_budget(self.study, ot, self.n_trials)
        trial = SearchTrial(ot)
        module = build_resolved(self.build, trial, self._value_labels)
        if not isinstance(module, L.LightningModule):
            raise TypeError(f"`build` must return a lightning.LightningModule, got {type(module).__name__}")
        dm = self.datamodule if is_datamodule(self.datamodule) else self.datamodule(trial)
        if not is_datamodule(dm):
            raise TypeError(f"the `datamodule` callable must return a LightningDataModule, got {type(dm).__name__}")
        if self.dedup:
            seen = find_duplicate(self.study, ot.params, before=ot.number)
            if seen is not None:
                ot.set_user_attr("duplicate_of", seen.number)
                ot.set_user_attr("metrics", seen.user_attrs.get("metrics", {}))
                return seen.values[0] if len(self.objs) == 1 else tuple(seen.values)
            check_budget(self.study, ot, self.n_trials)
        values = self._fit(ot, trial, module, dm)
        return values[next(iter(self.objs))] if len(self.objs) == 1 else tuple(values.values())

    def _fit(self, ot: optuna.trial.Trial, trial: SearchTrial, module: L.LightningModule, dm: Any) -> dict[str, float]:
        kw = self._trainer_kwargs(ot)
        prune_cb = None
        if not isinstance(self.pruner, optuna.pruners.NopPruner):
            prune_cb = TrialPruningCallback(ot, next(k for k in self.objs if k not in COSTS))
            kw["callbacks"].append(prune_cb)
        wb = self._wandb_logger(ot, trial, kw)
        ok = False
        try:
            trainer = L.Trainer(**kw)
            trainer.fit(module, datamodule=dm)
            if prune_cb is not None and prune_cb.pruned:
                ot.set_user_attr("pruned_at_validation", prune_cb.pruned_at)
                if wb is not None:
                    wb.experiment.summary.update({"state": "pruned"})
                ok = True
                raise optuna.TrialPruned(f"stopped at validation {prune_cb.pruned_at}")
            if "x" not in self._x and any(k in COSTS for k in self.objs):
                self._x["x"] = example_input_of(dm, self.example_input)
            values, numbers = evaluate(self.objs, trainer.callback_metrics, module, self._x.get("x"))
            ot.set_user_attr("metrics", numbers)
            if wb is not None:
                wb.experiment.summary.update(
                    dict(values, state="complete", **{f"metric/{k}": v for k, v in numbers.items()})
                )
            ok = True
        finally:
            if wb is not None:
                self.wandb_runs.append(str(Path(wb.experiment.dir).parent))
                wb.experiment.finish(exit_code=0 if ok else 1)
        return values

    def _trainer_kwargs(self, ot: optuna.trial.Trial) -> dict[str, Any]:
        """Quiet CPU defaults, overridden by the user's ``trainer_kwargs``; the user's callbacks copied per trial."""
        kw: dict[str, Any] = dict(
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=False,
            default_root_dir=str(self.out / f"trial-{ot.number}"),
        )  # trusted-path: an int
        kw.update(self.trainer_kwargs)
        kw["callbacks"] = copy.deepcopy(list(self.trainer_kwargs.get("callbacks") or []))
        return kw

    def _wandb_logger(self, ot: optuna.trial.Trial, trial: SearchTrial, kw: dict[str, Any]) -> Any:
        """One W&B run per trial (grouped by study), beside the user's own logger; ``None`` when W&B is off."""
        if self.wandb_mode is None:
            return None
        from lightning.pytorch.loggers import WandbLogger

        study_name = self.study.study_name
        wb = WandbLogger(
            project=self.wandb_project,
            group=study_name,
            name=f"{study_name}-trial-{ot.number}",
            job_type="trial",
            save_dir=str(self.out),
            offline=self.wandb_mode == "offline",
            config=dict(trial.params, trial_number=ot.number),
            reinit="create_new",
        )
        user_logger = self.trainer_kwargs.get("logger")
        kw["logger"] = [wb] + ([user_logger] if user_logger not in (None, False, True) else [])
        return wb
