"""Regularized (aging) evolution as an Optuna sampler.

Hand-written because Optuna has none: its genetic samplers (NSGA-II/III) keep the *fittest* population
(elitism), while aging evolution (Real et al., 2019, "Regularized Evolution for Image Classifier
Architecture Search") keeps the *youngest* ``P`` models and so removes even good ones once they are old,
which regularises against lucky, noisy evaluations.

Algorithm (one new trial):

1. ``population`` = the ``P`` most recent completed trials of the study (by trial number); while fewer than
   ``P`` have completed, sample at random (the initial population).
2. Draw ``S`` members uniformly without replacement; the best of them (by the study's direction) is the parent.
3. The child copies the parent and mutates exactly one parameter: a categorical takes a different choice
   uniformly; a number moves by ``N(0, sigma)`` in its normalised (log for log ranges) ``[0, 1]`` coordinate,
   reflected at the borders and snapped to its step.

The state is the study itself (read from storage every trial), so many workers on one storage and a resumed
study evolve one shared population.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial

from lightning_nas._compat import completed_trials, set_trial_system_attr
from lightning_nas._validate import check_int, check_range


def to_unit(d: FloatDistribution | IntDistribution, v: float) -> float:
    lo, hi, x = (math.log(d.low), math.log(d.high), math.log(v)) if d.log else (d.low, d.high, v)
    return 0.0 if hi == lo else (x - lo) / (hi - lo)


def from_unit(d: FloatDistribution | IntDistribution, u: float) -> float | int:
    lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
    x = lo + u * (hi - lo)
    x = math.exp(x) if d.log else x
    if isinstance(d, IntDistribution):
        return int(min(d.high, max(d.low, d.low + round((x - d.low) / d.step) * d.step)))
    if d.step is not None:
        x = d.low + round((x - d.low) / d.step) * d.step
    return float(min(d.high, max(d.low, x)))


def _reflect(u: float) -> float:
    u = abs(u) % 2.0
    return 2.0 - u if u > 1.0 else u


def mutate(rng: np.random.RandomState, dist: BaseDistribution, value: Any, sigma: float) -> Any:
    """``value`` mutated once under ``dist`` (a different choice, or a Gaussian step in unit space)."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[rng.randint(len(others))] if others else value
    num = cast(FloatDistribution | IntDistribution, dist)  # optuna's other (numeric) distributions
    return from_unit(num, _reflect(to_unit(num, value) + rng.normal(0.0, sigma)))


class RegularizedEvolutionSampler(BaseSampler):
    """Aging evolution over every parameter the study has seen (single objective).

    Args:
        population_size: ``P``, the number of most recent completed trials that form the population (and
            the number of random trials before evolution starts).
        sample_size: ``S``, the tournament size; the best of ``S`` random members is the parent.
        mutation_sigma: standard deviation of a numeric mutation in normalised ``[0, 1]`` units.
        seed: seed of the sampler's random numbers.

    Examples:
        >>> import optuna
        >>> from lightning_nas.search import RegularizedEvolutionSampler
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(sampler=RegularizedEvolutionSampler(population_size=4, sample_size=2, seed=0))
        >>> def objective(t):  # minimised: best at x = 0.5, op = 0
        ...     return (t.suggest_float("x", -1, 1) - 0.5) ** 2 + t.suggest_categorical("op", [0, 1])
        >>> study.optimize(objective, n_trials=20)
        >>> study.best_params["op"], abs(study.best_params["x"] - 0.5) < 0.5
        (0, True)
    """

    def __init__(
        self, population_size: int = 20, sample_size: int = 5, mutation_sigma: float = 0.2, seed: int | None = None
    ) -> None:
        check_int("population_size", population_size, 2)
        check_int("sample_size", sample_size, 1, population_size)
        check_range("mutation_sigma", mutation_sigma, 0.0, 1.0, low_inclusive=False)
        self.population_size, self.sample_size, self.mutation_sigma = population_size, sample_size, mutation_sigma
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if len(study.directions) > 1:
            raise ValueError(
                "RegularizedEvolutionSampler is single-objective; use strategy='nsga2' for several objectives"
            )
        return {n: d for n, d in self._space.calculate(study).items() if not d.single()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        done = completed_trials(study)
        if len(done) < self.population_size:
            return {}  # initial population: sample_independent draws at random
        population = sorted(done, key=lambda t: t.number)[-self.population_size :]
        picks = self._rng.choice(len(population), size=self.sample_size, replace=False)
        contenders = [population[i] for i in picks]
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        parent = max(contenders, key=lambda t: sign * float(t.value))
        child = {n: parent.params[n] for n in search_space if n in parent.params}
        if child:
            name = sorted(child)[self._rng.randint(len(child))]
            child[name] = mutate(self._rng, search_space[name], child[name], self.mutation_sigma)
        trial_attrs = {"parent": parent.number}
        set_trial_system_attr(study, trial, "evolution", trial_attrs)
        return child

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)
