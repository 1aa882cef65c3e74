"""A REINFORCE controller (policy-gradient reinforcement learning) as an Optuna sampler.

Hand-written because Optuna has no reinforcement-learning sampler. The controller is the one of Zoph & Le
(2017, "Neural Architecture Search with Reinforcement Learning") without the RNN: one independent policy per
parameter, trained with Williams' REINFORCE and a moving-average baseline.

Policy. A categorical parameter ``p`` with ``K`` choices (an integer range of at most ``max_int_choices``
values counts as categorical) has logits ``theta_p`` in R^K and ``pi_p(a) = softmax(theta_p)_a``. A float (or a
wider integer) has a Gaussian policy ``N(mu_p, sigma^2)`` on its normalised ``[0, 1]`` (log) coordinate.

Update, after each completed trial in order of trial number, with reward ``R`` (the objective; negated when
minimising)::

    b   <- beta * b + (1 - beta) * R                 (moving-average baseline)
    v   <- beta * v + (1 - beta) * (R - b)^2         (its running variance, to standardise)
    A    = (R - b_prev) / (sqrt(v_prev) + eps)        (advantage; 0 for the first trial)
    theta_p <- theta_p + lr * A * (onehot(a_p) - pi_p)            (= lr * A * grad log pi_p(a_p))
    mu_p    <- clip(mu_p + lr * A * (u_p - mu_p), 0, 1)            (Gaussian mean, step scaled by sigma^2)

The policy is rebuilt from the study's completed trials at every sample (cheap: one pass over the
history), so many workers on one storage and a resumed study train one shared controller.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from lightning_nas._compat import completed_trials
from lightning_nas._validate import check_int, check_range
from lightning_nas.search.multitrial._evolution import from_unit, to_unit


class ReinforceSampler(BaseSampler):
    """Policy-gradient controller over the parameters of a single-objective study.

    Args:
        learning_rate: step size of the policy update (``lr`` above).
        baseline_decay: ``beta``, the decay of the moving-average baseline and of the reward variance.
        sigma: standard deviation of the Gaussian policy of float parameters, in normalised units.
        max_int_choices: integer ranges with at most this many values get a categorical policy.
        seed: seed of the sampler's random numbers.

    Examples:
        >>> import optuna
        >>> from lightning_nas.search import ReinforceSampler
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(direction="maximize", sampler=ReinforceSampler(seed=0))
        >>> study.optimize(lambda t: float(t.suggest_categorical("op", ["bad", "good"]) == "good"), n_trials=20)
        >>> study.best_params
        {'op': 'good'}
    """

    def __init__(
        self,
        learning_rate: float = 0.2,
        baseline_decay: float = 0.8,
        sigma: float = 0.15,
        max_int_choices: int = 64,
        seed: int | None = None,
    ) -> None:
        check_range("learning_rate", learning_rate, 0.0, None, low_inclusive=False)
        check_range("baseline_decay", baseline_decay, 0.0, 1.0, high_inclusive=False)
        check_range("sigma", sigma, 0.0, 1.0, low_inclusive=False)
        check_int("max_int_choices", max_int_choices, 2)
        self.learning_rate, self.baseline_decay, self.sigma = learning_rate, baseline_decay, sigma
        self.max_int_choices = max_int_choices
        self._rng = np.random.RandomState(seed)
        self._cache: tuple[tuple, np.ndarray | float] | None = None

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if len(study.directions) > 1:
            raise ValueError(
                "ReinforceSampler is single-objective (one scalar reward); use strategy='nsga2' for several objectives"
            )
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ policy
    def _categorical(self, d: BaseDistribution) -> int | None:
        """Number of choices when ``d`` gets a categorical policy, else ``None``."""
        if isinstance(d, CategoricalDistribution):
            return len(d.choices)
        if isinstance(d, IntDistribution) and not d.log:
            n = (d.high - d.low) // d.step + 1
            return n if n <= self.max_int_choices else None
        return None

    def _action(self, d: BaseDistribution, value: Any) -> int | float:
        if isinstance(d, CategoricalDistribution):
            return int(d.to_internal_repr(value))
        if isinstance(d, IntDistribution) and self._categorical(d) is not None:
            return int((value - d.low) // d.step)
        return to_unit(cast(FloatDistribution | IntDistribution, d), value)  # the other distributions

    def policy(self, study: optuna.Study, name: str, dist: BaseDistribution) -> np.ndarray | float:
        """The current policy of parameter ``name``: logits (categorical) or the Gaussian mean in [0, 1]."""
        done = sorted(completed_trials(study), key=lambda t: t.number)
        key = (study.study_name, name, repr(dist), tuple(t.number for t in done))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        k = self._categorical(dist)
        param: np.ndarray | float = np.zeros(k) if k is not None else 0.5
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        beta, baseline, var, seen = self.baseline_decay, 0.0, 0.0, 0
        for t in done:
            reward = sign * float(t.value)
            adv = 0.0 if seen < 2 or var <= 0 else (reward - baseline) / (math.sqrt(var) + 1e-8)
            if seen == 0:
                baseline = reward
            else:
                var = beta * var + (1 - beta) * (reward - baseline) ** 2
                baseline = beta * baseline + (1 - beta) * reward
            seen += 1
            if adv == 0.0 or t.distributions.get(name) != dist:
                continue
            a = self._action(dist, t.params[name])
            if k is not None:
                assert isinstance(param, np.ndarray)  # logits, as made above
                probs = _softmax(param)
                grad = -probs
                grad[int(a)] += 1.0
                param = param + self.learning_rate * adv * grad
            else:
                param = float(np.clip(param + self.learning_rate * adv * (a - param), 0.0, 1.0))
        self._cache = (key, param)
        return param

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if len(study.directions) > 1:
            raise ValueError("ReinforceSampler is single-objective; use strategy='nsga2' for several objectives")
        d = param_distribution
        pol = self.policy(study, param_name, d)
        if isinstance(pol, np.ndarray):
            a = int(self._rng.choice(len(pol), p=_softmax(pol)))
            if isinstance(d, CategoricalDistribution):
                return d.to_external_repr(a)
            d = cast(IntDistribution, d)  # the other kind with logits (see _categorical)
            return int(d.low + a * d.step)
        u = float(np.clip(self._rng.normal(pol, self.sigma), 0.0, 1.0))
        return from_unit(cast(FloatDistribution | IntDistribution, d), u)  # the other distributions


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
