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
    """The Optuna sampler behind ``strategy`` (``kwargs`` go to its constructor).

    Examples:
        >>> from lightning_nas.search.multitrial import make_sampler
        >>> type(make_sampler("tpe", seed=0)).__name__
        'TPESampler'
        >>> type(make_sampler("nsga2", n_objectives=2, seed=0)).__name__
        'NSGAIISampler'
        >>> type(make_sampler("evolution", seed=0)).__name__
        'RegularizedEvolutionSampler'
    """
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
    """``"median"`` (``MedianPruner``), ``"halving"`` (``SuccessiveHalvingPruner``), ``None``/``"none"``.

    Examples:
        >>> from lightning_nas.search.multitrial import make_pruner
        >>> type(make_pruner("median")).__name__, type(make_pruner(None)).__name__
        ('MedianPruner', 'NopPruner')
    """
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
    """Search hyperparameters and architecture with one Lightning fit per trial (guide: "Search: multi-trial").

    Each trial calls ``build(trial)``; every ``space.ValueChoice`` read while it runs is sampled as a categorical
    named by its label, every ``LayerChoice``/``InputChoice`` left in the module is sampled and the module frozen
    (``space.freeze``) before the fit, so the trained network has no search machinery. Labels and hyperparameter
    names (``trial.choice``, ``trial.uniform``, ...) share one namespace.

    Args:
        build: ``trial -> LightningModule`` (a ``SearchTrial``: ``choice``, ``uniform``, ``loguniform``,
            ``integer``, ``arch``).
        datamodule: a ``LightningDataModule``, or ``trial -> LightningDataModule``.
        objectives: ``{key: "maximize" | "minimize"}``, or one key (maximised). A key is any metric in
            ``trainer.callback_metrics`` after the fit (its last value), or a cost measured on the trained module
            by ``lightning_nas.deploy.measure``: ``latency_ms``, ``onnx_latency_ms``, ``params``, ``macs``,
            ``flops``, ``size_bytes`` (on ``example_input``).
        n_trials: the study's total budget of finished (complete or pruned) trials, shared by every worker on
            ``storage`` and counted across resumes: rerunning with the same ``storage`` and ``study_name``
            continues.
        strategy: ``"random"``, ``"grid"``, ``"tpe"``, ``"gp"`` (Bayesian, Optuna's ``GPSampler``), ``"nsga2"``
            (genetic, multi-objective), ``"evolution"`` (regularized/aging evolution), ``"reinforce"``
            (policy-gradient controller), or any Optuna ``BaseSampler``.
        storage: ``None`` (in memory), ``"sqlite:///file.db"``, ``"postgresql://user:pw@host:port/db"``,
            ``"journal:///file.log"`` (or any SQLAlchemy URL), or an Optuna storage.
        study_name: the study shared by workers and continued on resume (default ``"lightning-nas-search"``).
        trainer_kwargs: ``lightning.Trainer`` arguments for every trial (defaults: CPU, no progress bar, no
            checkpoints, no logger); ``callbacks`` are deep-copied per trial.
        timeout: seconds after which this worker starts no new trial.
        pruner: ``"median"`` (``MedianPruner``), ``"halving"`` (``SuccessiveHalvingPruner``), ``None``, or an
            Optuna pruner; single objective only. Adds a ``TrialPruningCallback`` on the first metric objective.
        seed: sampler seed (the CLI offsets it by the process id so that workers differ).
        search_space: ``{name: [values]}`` for ``"grid"``; by default derived from a dry call of ``build`` (only
            discrete parameters; a dry call sees the branch taken with every first option).
        sampler_kwargs: passed to the sampler (e.g. ``population_size``, ``n_startup_trials``).
        wandb: ``False``, ``True``/``"offline"`` or ``"online"``: each trial its own W&B run, plus a summary run.
        wandb_project: the W&B project of those runs.
        out_dir: where trial folders, W&B runs and the summary go (``<out_dir>/<study_name>/``).
        example_input: the tensor costs are measured on (default ``datamodule.example_input(1)`` or the first
            validation sample).
        heartbeat_interval: RDB storages: seconds between a running trial's heartbeats.
        grace_period: RDB storages: seconds of silence after which a trial is failed (and its parameters retried
            once).
        summary: log the study's explanation (importance, Pareto front, history) at the end.
        dedup: a trial whose sampled parameters equal those of an earlier complete trial is not fitted; it is
            completed with that trial's values (user attribute ``duplicate_of``) and does not count toward
            ``n_trials``. The search also ends once as many trials as ``n_trials`` were answered so (the sampler
            keeps proposing what it has seen, or the space is exhausted). ``find_duplicate`` is the lookup.

    Returns:
        a ``SearchResult``: ``study``, ``objectives``, ``best_trials`` (the best trial, or the Pareto front),
        ``best_params``, ``best_values``, ``pareto_front``, ``importance``, ``summary_dir``, ``wandb_runs``.

    Raises:
        ValueError: an argument out of range (naming it, the value and what is allowed), or a study on
            ``storage`` with a different objective set.
        TypeError: ``build`` returned something other than a ``LightningModule``.
        StorageUnreachableError: ``storage`` cannot be reached.

    Examples:
        Two trials over a width, one operation and the learning rate (tiny fits; give them epochs in earnest):

        >>> import tempfile
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier
        >>> from lightning_nas.search import run
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         w = space.ValueChoice([4, 8], label="width")  # read at construction: a plain int
        ...         self.stem = nn.Conv2d(1, w, 3, padding=1)
        ...         self.op = space.LayerChoice({"conv": nn.Conv2d(w, w, 3, padding=1), "skip": nn.Identity()},
        ...                                     label="op")
        ...         self.head = nn.Linear(w, 10)
        ...
        ...     def forward(self, x):
        ...         return self.head(self.op(self.stem(x).relu()).mean((2, 3)))
        >>> def build(trial):
        ...     return Classifier(Net(), lr=trial.loguniform("lr", 1e-3, 1e-1))
        >>> result = run(build, DigitsDataModule(), objectives={"val_acc": "maximize"}, n_trials=2,
        ...              strategy="random", seed=0, summary=False, out_dir=tempfile.mkdtemp(),
        ...              trainer_kwargs={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1})
        >>> len(result.study.trials), sorted(result.best_params)
        (2, ['lr', 'op', 'width'])
        >>> final = space.build(Net, {k: result.best_params[k] for k in ("width", "op")})  # plain nn.Module
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
    try:
        with _quiet_lightning(), storage_errors(storage):
            _optimize(study, st, objective, n_trials, timeout, heartbeat_interval)
        best = _best_trials(study)
        result = SearchResult(study=study, objectives=objs, best_trials=best, wandb_runs=objective.wandb_runs)
        if summary:
            from lightning_nas.search.multitrial._explain import summarize

            summarize(result, out / "summary", wandb_mode=mode, wandb_project=wandb_project)
    finally:
        if isinstance(storage, str) and isinstance(st, optuna.storages.RDBStorage):
            st.engine.dispose()  # close the database connections this call opened (a later query reconnects)
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
