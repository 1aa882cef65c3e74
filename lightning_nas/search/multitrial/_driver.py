"""``run``: multi-trial search where each trial is one ordinary Lightning fit of ``build(trial)``."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.search.multitrial._evolution import RegularizedEvolutionSampler
from lightning_nas.search.multitrial._objectives import COSTS, parse_objectives
from lightning_nas.search.multitrial._reinforce import ReinforceSampler
from lightning_nas.search.multitrial._storage import open_storage, storage_errors
from lightning_nas.search.multitrial._trial import (
    SearchTrial,
    grid_from_distributions,
    is_datamodule,
    record_search_space,
)
from lightning_nas.search.multitrial._trial_fit import Surplus, TrialFit

STRATEGIES = ("random", "grid", "tpe", "gp", "nsga2", "evolution", "reinforce")
SINGLE_OBJECTIVE = ("evolution", "reinforce")
PRUNERS = ("median", "halving", "none")
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


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
def _quiet_lightning() -> Iterator[None]:
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
    objs = _check_run_args(build, datamodule, objectives, n_trials, timeout, study_name, dedup)
    mode = _wandb_mode(wandb)
    pr = make_pruner(pruner)
    _check_pruner(pr, pruner, objs)
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
    study = _open_study(st, storage, sampler, pr, study_name, objs)
    out = Path(out_dir) / study_name  # trusted-path: the user's own config
    objective = TrialFit(
        study=study,
        build=build,
        datamodule=datamodule,
        objectives=objs,
        n_trials=n_trials,
        pruner=pr,
        trainer_kwargs=dict(trainer_kwargs or {}),
        wandb_mode=mode,
        wandb_project=wandb_project,
        out=out,
        example_input=example_input,
        dedup=dedup,
    )
    with _quiet_lightning(), storage_errors(storage):
        _optimize(study, st, objective, n_trials, timeout, heartbeat_interval)
    best = _best_trials(study)
    result = SearchResult(study=study, objectives=objs, best_trials=best, wandb_runs=objective.wandb_runs)
    if summary:
        from lightning_nas.search.multitrial._explain import summarize

        summarize(result, out / "summary", wandb_mode=mode, wandb_project=wandb_project)
    return result


def _check_run_args(
    build: Any,
    datamodule: Any,
    objectives: Mapping[str, str] | str,
    n_trials: int,
    timeout: float | None,
    study_name: str | None,
    dedup: bool,
) -> dict[str, str]:
    """Validate ``run``'s arguments before any work; returns the parsed objectives."""
    if not callable(build):
        raise TypeError(f"`build` must be a callable trial -> LightningModule, got {type(build).__name__}")
    if not (is_datamodule(datamodule) or callable(datamodule)):
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
    return objs


def _check_pruner(pr: optuna.pruners.BasePruner, pruner: Any, objs: Mapping[str, str]) -> None:
    """A pruner needs one objective, and a logged metric (not a measured cost) to monitor."""
    if isinstance(pr, optuna.pruners.NopPruner):
        return
    if len(objs) > 1:
        raise ValueError(
            f"`pruner`={pruner!r} needs a single objective (Optuna cannot prune multi-objective "
            f"trials); got objectives {list(objs)}"
        )
    if not [k for k in objs if k not in COSTS]:
        raise ValueError(f"`pruner`={pruner!r} needs a logged metric objective to monitor; got {list(objs)}")


def _open_study(
    st: Any,
    storage: Any,
    sampler: optuna.samplers.BaseSampler,
    pr: optuna.pruners.BasePruner,
    study_name: str,
    objs: dict[str, str],
) -> optuna.Study:
    """Create or resume the study; resuming with other objectives is refused."""
    with storage_errors(storage):  # e.g. a read-only SQLite or journal file: one line naming the cause
        study = optuna.create_study(
            storage=st,
            sampler=sampler,
            pruner=pr,
            study_name=study_name,
            directions=cast(list[Literal["minimize", "maximize"]], list(objs.values())),  # parse_objectives checked
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
    return study


def _optimize(
    study: optuna.Study,
    st: Any,
    objective: Callable[[optuna.trial.Trial], Any],
    n_trials: int,
    timeout: float | None,
    heartbeat_interval: int | None,
) -> None:
    """One trial at a time until the study's shared budget (finished + running trials, duplicates not
    counted) or ``timeout`` is spent; stale trials of dead workers are failed first."""
    t0 = time.monotonic()
    while True:
        if isinstance(st, optuna.storages.RDBStorage) and heartbeat_interval:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        counted = study.get_trials(deepcopy=False, states=_COUNTED + (TrialState.RUNNING,))
        dups = sum("duplicate_of" in t.user_attrs for t in counted)
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        if len(counted) - dups >= n_trials or dups >= n_trials or (left is not None and left <= 0):
            break
        study.optimize(objective, n_trials=1, timeout=left, catch=(Surplus,), gc_after_trial=False)


def _best_trials(study: optuna.Study) -> list[FrozenTrial]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]
