"""``run``: multi-trial search where each trial is one ordinary Lightning fit of ``build(trial)``."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.search.multitrial._evolution import RegularizedEvolutionSampler
from lightning_nas.search.multitrial._objectives import COSTS, evaluate, example_input_of, parse_objectives
from lightning_nas.search.multitrial._pruning import TrialPruningCallback
from lightning_nas.search.multitrial._reinforce import ReinforceSampler
from lightning_nas.search.multitrial._storage import open_storage, storage_errors
from lightning_nas.search.multitrial._trial import (
    SearchTrial,
    _is_datamodule,
    build_resolved,
    grid_from_distributions,
    record_search_space,
)

STRATEGIES = ("random", "grid", "tpe", "gp", "nsga2", "evolution", "reinforce")
SINGLE_OBJECTIVE = ("evolution", "reinforce")
PRUNERS = ("median", "halving", "none")
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class _Surplus(Exception):
    """This trial would exceed the shared budget (another worker started the last one first)."""


@dataclass
class SearchResult:
    """What ``run`` returns.

    Attributes:
        study: the Optuna study (all trials, any state).
        objectives: ``{key: direction}``.
        best_trials: the best trial (one objective) or the Pareto front (several), as ``FrozenTrial``.
        importance: ``{objective: {"fanova": {param: share}, "ped_anova": {...}}}`` (empty when too few trials).
        summary_dir: where the summary's tables, plots and ``summary.json`` were written.
        wandb_runs: the W&B run directories (trials, then the summary run) when ``wandb`` was on.
    """

    study: optuna.Study
    objectives: dict[str, str]
    best_trials: list[FrozenTrial]
    importance: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    summary_dir: Path | None = None
    wandb_runs: list[str] = field(default_factory=list)

    @property
    def best_params(self) -> dict[str, Any]:
        """Parameters of the best trial (of the first Pareto-optimal one for several objectives)."""
        return dict(self.best_trials[0].params) if self.best_trials else {}

    @property
    def best_values(self) -> dict[str, float]:
        """Objective values of the best trial (first Pareto-optimal one for several objectives)."""
        return dict(zip(self.objectives, self.best_trials[0].values)) if self.best_trials else {}

    @property
    def pareto_front(self) -> list[dict[str, Any]]:
        """``[{"number", "params", "values"}]`` for every best trial (the Pareto front)."""
        return [
            {"number": t.number, "params": dict(t.params), "values": dict(zip(self.objectives, t.values))}
            for t in self.best_trials
        ]


def make_sampler(
    strategy: str | optuna.samplers.BaseSampler,
    *,
    n_objectives: int = 1,
    seed: int | None = None,
    search_space: Mapping[str, Sequence[Any]] | None = None,
    n_trials: int = 100,
    **kwargs: Any,
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler behind ``strategy`` (``kwargs`` go to its constructor)."""
    if isinstance(strategy, optuna.samplers.BaseSampler):
        return strategy
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {list(STRATEGIES)} or an optuna BaseSampler, got {strategy!r}")
    s = strategy.lower()
    if s in SINGLE_OBJECTIVE and n_objectives > 1:
        raise ValueError(
            f"strategy={s!r} optimises one objective, but {n_objectives} objectives were given; use "
            "'nsga2' (or 'tpe', 'gp', 'random', 'grid') for several objectives"
        )
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed, **kwargs)
    if s == "grid":
        if not search_space:
            raise ValueError(
                "strategy='grid' needs the search space up front: pass `search_space=` or let run() "
                "derive it from a dry call of `build`"
            )
        return optuna.samplers.GridSampler(dict(search_space), seed=seed, **kwargs)
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed, **kwargs)
    if s == "nsga2":
        kwargs.setdefault("population_size", max(4, min(50, n_trials // 3)))
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if s == "evolution":
        kwargs.setdefault("population_size", max(2, min(20, n_trials // 3)))
        kwargs.setdefault("sample_size", max(1, kwargs["population_size"] // 4))
        return RegularizedEvolutionSampler(seed=seed, **kwargs)
    return ReinforceSampler(seed=seed, **kwargs)


def make_pruner(pruner: str | optuna.pruners.BasePruner | None) -> optuna.pruners.BasePruner:
    """``"median"`` (``MedianPruner``), ``"halving"`` (``SuccessiveHalvingPruner``), ``None``/``"none"``."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner is None or pruner == "none":
        return optuna.pruners.NopPruner()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    raise ValueError(f"`pruner` must be one of {list(PRUNERS)}, None or an optuna BasePruner, got {pruner!r}")


@contextmanager
def _quiet_lightning():
    names = ["lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def _wandb_mode(wandb: bool | str) -> str | None:
    if wandb is False or wandb is None:
        return None
    if wandb is True:
        return "offline"
    if wandb in ("offline", "online"):
        return wandb
    raise ValueError(f"`wandb` must be False, True, 'offline' or 'online', got {wandb!r}")


def run(
    build: Callable[[SearchTrial], L.LightningModule],
    datamodule: L.LightningDataModule | Callable[[SearchTrial], L.LightningDataModule],
    *,
    objectives: Mapping[str, str] | str,
    n_trials: int,
    strategy: str | optuna.samplers.BaseSampler = "tpe",
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    pruner: str | optuna.pruners.BasePruner | None = None,
    seed: int | None = None,
    search_space: Mapping[str, Sequence[Any]] | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    wandb: bool | str = False,
    wandb_project: str = "lightning-nas-search",
    out_dir: str | Path = "nas_runs/search",
    example_input: Any = None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    summary: bool = True,
    dedup: bool = False,
) -> SearchResult:
    """Search hyperparameters and architecture with one Lightning fit per trial; README "Multi-trial search".

    ``n_trials`` is the study's total budget of finished (complete or pruned) trials, shared by every worker on
    ``storage`` and counted across resumes: rerunning with the same ``storage`` and ``study_name`` continues.

    ``dedup=True``: a trial whose sampled parameters equal those of an earlier complete trial is not fitted; it
    is completed with that trial's values (user attribute ``duplicate_of``) and does not count toward
    ``n_trials``. The search also ends once as many trials as ``n_trials`` were answered so (the sampler keeps
    proposing what it has seen, or the space is exhausted).
    """
    if not callable(build):
        raise TypeError(f"`build` must be a callable trial -> LightningModule, got {type(build).__name__}")
    if not (_is_datamodule(datamodule) or callable(datamodule)):
        raise TypeError(
            "`datamodule` must be a LightningDataModule or a callable trial -> LightningDataModule, got "
            f"{type(datamodule).__name__}"
        )
    objs = parse_objectives(objectives)
    check_int("n_trials", n_trials, 1)
    if timeout is not None:
        check_range("timeout", timeout, 0.0, None, low_inclusive=False)
    check_type("study_name", study_name, str, allow_none=True)
    check_type("dedup", dedup, bool)
    mode = _wandb_mode(wandb)
    trainer_kwargs = dict(trainer_kwargs or {})
    metric_objs = [k for k in objs if k not in COSTS]
    pr = make_pruner(pruner)
    if not isinstance(pr, optuna.pruners.NopPruner):
        if len(objs) > 1:
            raise ValueError(
                f"`pruner`={pruner!r} needs a single objective (Optuna cannot prune multi-objective "
                f"trials); got objectives {list(objs)}"
            )
        if not metric_objs:
            raise ValueError(f"`pruner`={pruner!r} needs a logged metric objective to monitor; got {list(objs)}")
    if isinstance(strategy, str) and strategy.lower() == "grid" and search_space is None:
        search_space = grid_from_distributions(record_search_space(build, datamodule))
    sampler = make_sampler(
        strategy,
        n_objectives=len(objs),
        seed=seed,
        search_space=search_space,
        n_trials=n_trials,
        **dict(sampler_kwargs or {}),
    )
    study_name = study_name or "lightning-nas-search"
    st = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    with storage_errors(storage):  # e.g. a read-only SQLite or journal file: one line naming the cause
        study = optuna.create_study(
            storage=st,
            sampler=sampler,
            pruner=pr,
            study_name=study_name,
            directions=list(objs.values()),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("objectives")
        if stored is None:
            study.set_user_attr("objectives", objs)
    if stored is not None and stored != objs:
        raise ValueError(
            f"study {study_name!r} in this storage was created with objectives {stored}; resuming "
            f"it with {objs} is not possible (use another `study_name`)"
        )
    out = Path(out_dir) / study_name  # trusted-path: the user's own config
    wandb_runs: list[str] = []
    dm_cache: dict[str, Any] = {}
    value_labels: dict[str, list[Any]] = {}

    def objective(ot: optuna.trial.Trial) -> float | tuple[float, ...]:
        if not dedup:
            _check_budget(study, ot, n_trials)
        trial = SearchTrial(ot)
        module = build_resolved(build, trial, value_labels)
        if not isinstance(module, L.LightningModule):
            raise TypeError(f"`build` must return a lightning.LightningModule, got {type(module).__name__}")
        dm = datamodule if _is_datamodule(datamodule) else datamodule(trial)
        if not _is_datamodule(dm):
            raise TypeError(f"the `datamodule` callable must return a LightningDataModule, got {type(dm).__name__}")
        if dedup:
            seen = find_duplicate(study, ot.params, before=ot.number)
            if seen is not None:
                ot.set_user_attr("duplicate_of", seen.number)
                ot.set_user_attr("metrics", seen.user_attrs.get("metrics", {}))
                return seen.values[0] if len(objs) == 1 else tuple(seen.values)
            _check_budget(study, ot, n_trials)
        kw = dict(
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=False,
            default_root_dir=str(out / f"trial-{ot.number}"),
        )  # trusted-path: an int
        kw.update(trainer_kwargs)
        kw["callbacks"] = copy.deepcopy(list(trainer_kwargs.get("callbacks") or []))
        prune_cb = None
        if not isinstance(pr, optuna.pruners.NopPruner):
            prune_cb = TrialPruningCallback(ot, metric_objs[0])
            kw["callbacks"].append(prune_cb)
        wb = None
        if mode is not None:
            from lightning.pytorch.loggers import WandbLogger

            wb = WandbLogger(
                project=wandb_project,
                group=study_name,
                name=f"{study_name}-trial-{ot.number}",
                job_type="trial",
                save_dir=str(out),
                offline=mode == "offline",
                config=dict(trial.params, trial_number=ot.number),
                reinit="create_new",
            )
            user_logger = trainer_kwargs.get("logger")
            kw["logger"] = [wb] + ([user_logger] if user_logger not in (None, False, True) else [])
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
            if "x" not in dm_cache and any(k in COSTS for k in objs):
                dm_cache["x"] = example_input_of(dm, example_input)
            values, numbers = evaluate(objs, trainer.callback_metrics, module, dm_cache.get("x"))
            ot.set_user_attr("metrics", numbers)
            if wb is not None:
                wb.experiment.summary.update(
                    dict(values, state="complete", **{f"metric/{k}": v for k, v in numbers.items()})
                )
            ok = True
        finally:
            if wb is not None:
                wandb_runs.append(str(Path(wb.experiment.dir).parent))
                wb.experiment.finish(exit_code=0 if ok else 1)
        return values[next(iter(objs))] if len(objs) == 1 else tuple(values.values())

    t0 = time.monotonic()
    with _quiet_lightning(), storage_errors(storage):
        while True:
            if isinstance(st, optuna.storages.RDBStorage) and heartbeat_interval:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            counted = study._storage.get_all_trials(
                study._study_id, deepcopy=False, states=_COUNTED + (TrialState.RUNNING,)
            )
            dups = sum("duplicate_of" in t.user_attrs for t in counted)
            left = None if timeout is None else timeout - (time.monotonic() - t0)
            if len(counted) - dups >= n_trials or dups >= n_trials or (left is not None and left <= 0):
                break
            study.optimize(objective, n_trials=1, timeout=left, catch=(_Surplus,), gc_after_trial=False)
    best = _best_trials(study)
    result = SearchResult(study=study, objectives=objs, best_trials=best, wandb_runs=wandb_runs)
    if summary:
        from lightning_nas.search.multitrial._explain import summarize

        summarize(result, out / "summary", wandb_mode=mode, wandb_project=wandb_project)
    return result


def _check_budget(study: optuna.Study, ot: optuna.trial.Trial, n_trials: int) -> None:
    ahead = study._storage.get_all_trials(study._study_id, deepcopy=False, states=_COUNTED + (TrialState.RUNNING,))
    if sum(t.number < ot.number and "duplicate_of" not in t.user_attrs for t in ahead) >= n_trials:
        ot.set_user_attr("surplus", True)
        raise _Surplus(f"trial {ot.number}: the study already has {n_trials} trials")


def find_duplicate(study: optuna.Study, params: Mapping[str, Any], before: int | None = None) -> FrozenTrial | None:
    """The first complete trial of ``study`` (numbered below ``before``, if given) whose parameters equal
    ``params``, or ``None``: what ``run(..., dedup=True)`` answers a repeated configuration with."""
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
        if (before is None or t.number < before) and t.params == dict(params):
            return t
    return None


def _best_trials(study: optuna.Study) -> list[FrozenTrial]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if study._is_multi_objective() else [study.best_trial]
