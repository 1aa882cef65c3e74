"""The object ``build(trial)`` receives: define-by-run hyperparameters on top of an Optuna trial.

``SearchTrial`` is a thin, validated facade over ``optuna.trial.Trial`` (``suggest_categorical``,
``suggest_float``, ``suggest_int``); ``_RecordingTrial`` is the same facade over a recorder, used for a dry
call of ``build`` that discovers the search space up front (the grid strategy needs it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

_PRIMITIVES = (type(None), bool, int, float, str)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a hyperparameter name must be a non-empty string, got {name!r}")
    return name


def _check_bounds(name: str, low: Any, high: Any, *, positive: bool = False) -> None:
    for arg, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"hyperparameter {name!r}: `{arg}` must be a finite number, got {v!r}")
    if low > high:
        raise ValueError(f"hyperparameter {name!r}: `low` must be <= `high`, got low={low!r} > high={high!r}")
    if positive and low <= 0:
        raise ValueError(f"hyperparameter {name!r}: a log-uniform range needs `low` > 0, got low={low!r}")


class SearchTrial:
    """One trial of a search, as seen by ``build(trial)``.

    Every method samples one named hyperparameter (the name is the key in ``params``, in W&B's config and
    in the importance table); asking twice for the same name returns the same value.

    Attributes:
        optuna_trial: the underlying ``optuna.trial.Trial`` (for anything not wrapped here).

    Examples:
        >>> import optuna
        >>> from lightning_nas.search import SearchTrial
        >>> trial = SearchTrial(optuna.create_study().ask())
        >>> trial.choice("width", [16, 32]) in (16, 32), 1e-4 <= trial.loguniform("lr", 1e-4, 1e-1) <= 1e-1
        (True, True)
        >>> sorted(trial.params)
        ['lr', 'width']
    """

    def __init__(self, optuna_trial: Any) -> None:
        self.optuna_trial = optuna_trial
        self._labels: dict[str, dict[str, Any]] = {}  # name -> {str label: original option}

    # ------------------------------------------------------------------ sampling
    def choice(self, name: str, options: Sequence[Any]) -> Any:
        """One of ``options`` (categorical). Options that are not ``None/bool/int/float/str`` (modules,
        tuples, ...) are sampled by their ``str`` label, which must then be unique."""
        _check_name(name)
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
            raise ValueError(f"hyperparameter {name!r}: `options` must be a list or tuple, got {options!r}")
        options = list(options)
        if not options:
            raise ValueError(f"hyperparameter {name!r}: `options` is empty; give at least one choice")
        if all(isinstance(o, _PRIMITIVES) for o in options):
            return self.optuna_trial.suggest_categorical(name, options)
        labels = [str(o) for o in options]
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"hyperparameter {name!r}: non-primitive options are sampled by their str() label, "
                f"which must be unique; got labels {labels}"
            )
        self._labels[name] = dict(zip(labels, options))
        return self._labels[name][self.optuna_trial.suggest_categorical(name, labels)]

    def uniform(self, name: str, low: float, high: float) -> float:
        """A float uniform in ``[low, high]``."""
        _check_bounds(_check_name(name), low, high)
        return float(self.optuna_trial.suggest_float(name, float(low), float(high)))

    def loguniform(self, name: str, low: float, high: float) -> float:
        """A float whose logarithm is uniform in ``[log low, log high]`` (learning rates, weight decay)."""
        _check_bounds(_check_name(name), low, high, positive=True)
        return float(self.optuna_trial.suggest_float(name, float(low), float(high), log=True))

    def integer(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        """An integer in ``[low, high]`` on a grid of ``step`` (log-uniform when ``log``; then ``step`` = 1)."""
        _check_bounds(_check_name(name), low, high, positive=log)
        for arg, v in (("low", low), ("high", high), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"hyperparameter {name!r}: `{arg}` must be an int, got {v!r}")
        if step < 1:
            raise ValueError(f"hyperparameter {name!r}: `step` must be >= 1, got {step!r}")
        if log and step != 1:
            raise ValueError(f"hyperparameter {name!r}: `log=True` needs step=1, got step={step!r}")
        return int(self.optuna_trial.suggest_int(name, low, high, step=step, log=log))

    def arch(self, model: Any) -> Any:
        """Sample every ``space.LayerChoice``/``InputChoice`` left in ``model`` (one categorical per label, named
        by the label) and return ``space.freeze(model, sampled, inplace=True)``: a plain module.

        ``ValueChoice``s are resolved earlier, while ``build`` runs (see ``build_resolved``).
        """
        from lightning_nas import space

        decs = {lb: d for lb, d in space.decisions(model).items() if d.kind != "value"}
        if not decs:
            return model
        sampled = {lb: self.choice(lb, list(d.candidates)) for lb, d in decs.items()}
        return space.freeze(model, sampled, inplace=True)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def number(self) -> int:
        """The trial's number in the study (0, 1, 2, ...)."""
        return int(self.optuna_trial.number)

    @property
    def params(self) -> dict[str, Any]:
        """Everything sampled so far, ``{name: value}`` (non-primitive choices by their label)."""
        return dict(self.optuna_trial.params)

    def set_user_attr(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value with the trial (shown in the summary table)."""
        self.optuna_trial.set_user_attr(key, value)


class _Recorder:
    """Stands in for an Optuna trial during a dry call of ``build``: returns the first option / the low end and
    records each distribution."""

    number = -1

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}
        self.params: dict[str, Any] = {}

    def _keep(self, name: str, dist: BaseDistribution, value: Any) -> Any:
        self.distributions.setdefault(name, dist)
        return self.params.setdefault(name, value)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._keep(name, CategoricalDistribution(list(choices)), choices[0])

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._keep(name, FloatDistribution(low, high, log=log, step=step), low)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._keep(name, IntDistribution(low, high, log=log, step=step), low)

    def set_user_attr(self, key: str, value: Any) -> None:
        pass


def build_resolved(build: Any, trial: SearchTrial, known: dict[str, list[Any]] | None = None) -> Any:
    """``build(trial)`` with the search space resolved: every ``ValueChoice`` read while building is sampled as a
    categorical named by its label (under ``space.fixed_arch``), then every remaining ``LayerChoice``/
    ``InputChoice`` is sampled and frozen by ``trial.arch``.

    A ``ValueChoice`` first met while building is sampled and the module built again (once per new label;
    ``known`` carries labels between trials so later trials build once).
    """
    from lightning_nas import space

    known = {} if known is None else known
    sampled = {lb: trial.choice(lb, values) for lb, values in known.items()}
    for _ in range(16):
        with space.fixed_arch(sampled), space.recording() as rec:
            module = build(trial)
        new = {lb: list(values) for lb, (values, _chosen) in rec.items() if lb not in sampled}
        if not new:
            break
        for lb, values in new.items():
            known[lb] = values
            sampled[lb] = trial.choice(lb, values)
    if isinstance(module, nn.Module) and space.named_choices(module):
        module = trial.arch(module)
    return module


def record_search_space(build: Any, datamodule: Any = None) -> dict[str, BaseDistribution]:
    """Call ``build`` (and a callable ``datamodule``) once with a recording trial; return ``{name: distribution}``.

    Define-by-run branches: only the branch taken with every first option / low end is seen.

    Examples:
        >>> from lightning_nas.search.multitrial import record_search_space
        >>> def build(trial):
        ...     lr = trial.loguniform("lr", 1e-4, 1e-1)
        ...     return trial.choice("width", [16, 32])
        >>> sorted(record_search_space(build))
        ['lr', 'width']
    """
    rec = _Recorder()
    trial = SearchTrial(rec)
    build_resolved(build, trial)
    if callable(datamodule) and not is_datamodule(datamodule):
        datamodule(trial)
    return dict(rec.distributions)


def grid_from_distributions(dists: dict[str, BaseDistribution], max_values: int = 1000) -> dict[str, list[Any]]:
    """The grid Optuna's ``GridSampler`` needs: categorical choices and enumerated integer ranges."""
    grid: dict[str, list[Any]] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log and (d.high - d.low) // d.step + 1 <= max_values:
            grid[name] = list(range(d.low, d.high + 1, d.step))
        else:
            raise ValueError(
                f"strategy='grid' needs discrete hyperparameters, but {name!r} is {d!r}; sample it "
                "with trial.choice([...]) or pass `search_space={name: [values...]}` to run()"
            )
    if not grid:
        raise ValueError("strategy='grid': `build` sampled no hyperparameter in its dry call; nothing to search")
    return grid


def is_datamodule(obj: Any) -> bool:
    import lightning as L

    return isinstance(obj, L.LightningDataModule)
