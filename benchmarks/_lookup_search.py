"""Sample efficiency of the multi-trial strategies on an enumerable space, with a LOOKUP objective.

A trial samples one categorical per ``LayerChoice`` label of the space module (``_digits_space`` or
``_digits_space_large``) and, instead of training, returns the architecture's standalone validation accuracy
from the cached ground truth, taking ONE of its seeds at random each time (so a repeated architecture gets a
fresh, realistically noisy evaluation, as a re-fit would). With ``dedup`` a repeated architecture is answered
from the study instead (``lightning_nas.search.multitrial.find_duplicate``, exactly what ``run(dedup=True)``
does): no fit, and it does not count toward the budget. Costs are counted in FITS.

Targets ("top-3"): architectures ranked by their ground-truth score = mean over seeds of the mean of val and
test accuracy (540 images, both splits equally large); the target set is the 3 best plus any architecture tied
with the 3rd (equal score), so ties are never broken arbitrarily.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import optuna

from lightning_nas.search.multitrial import SearchTrial, find_duplicate, make_sampler

optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass
class Truth:
    """Ground truth of one space: rows by key, keys ranked by score, the score, and the target sets."""

    sp: ModuleType
    by_key: dict[str, dict[str, Any]]
    ranked: list[str]
    score: dict[str, float]

    def top(self, k: int) -> set[str]:
        """The ``k`` best architectures plus any tied with the ``k``-th."""
        cut = self.score[self.ranked[k - 1]]
        return {a for a in self.ranked if self.score[a] >= cut}

    def key(self, params: dict[str, Any]) -> str:
        return self.sp.arch_key({lb: params[lb] for lb in self.sp.LABELS})


def load(sp: ModuleType, split_size: int = 270) -> Truth:
    """The truth of space module ``sp`` (any number of seeds); accuracies are counted in images, so ties are exact."""
    rows = {r["key"]: r for r in sp.load_truth()["archs"]}
    score = {}
    for k, r in rows.items():
        correct = [round(a * split_size) for a in r["val_acc_per_seed"] + r["test_acc_per_seed"]]
        score[k] = sum(correct) / (split_size * len(correct))
    return Truth(sp, rows, sorted(rows, key=lambda k: (-score[k], k)), score)


def random_median(n_targets: int, n_archs: int, replace: bool = True) -> int:
    """Exact median fits of blind random search to the first of ``n_targets`` among ``n_archs`` architectures
    (with replacement: geometric; without: hypergeometric): the noise-free baseline."""
    k = 1
    while True:
        miss = (1 - n_targets / n_archs) ** k if replace else math.comb(n_archs - n_targets, k) / math.comb(n_archs, k)
        if 1 - miss >= 0.5:
            return k
        k += 1


def sampler(strategy: str, seed: int, budget: int, sp: ModuleType, settings: dict[str, Any]):
    grid = {lb: list(sp.CANDIDATES) for lb in sp.LABELS}
    return make_sampler(strategy, seed=seed, search_space=grid, n_trials=budget, **settings)


@dataclass
class Run:
    """One search: the study, the fit number of each trial (``None``: answered from the study), and the keys."""

    study: optuna.Study
    fit_no: list[int | None]
    keys: list[str]

    def fits_to(self, targets: set[str], budget: int) -> int:
        """Fits until the first target is evaluated; ``budget + 1`` when never (censored)."""
        for n, k in zip(self.fit_no, self.keys):
            if n is not None and k in targets:
                return n
        return budget + 1

    def pick_after(self, n: int) -> str:
        """The architecture with the best observed value among the trials made within the first ``n`` fits."""
        cum = np.cumsum([f is not None for f in self.fit_no])
        return max((t.value, k) for t, c, k in zip(self.study.trials, cum, self.keys) if c <= n)[1]


def search(
    truth: Truth,
    strategy: str,
    seed: int,
    budget: int,
    settings: dict[str, Any] | None = None,
    dedup: bool = False,
    rng_offset: int = 10_000,
) -> Run:
    """One lookup search of ``budget`` fits (with ``dedup``: also ending after ``budget`` duplicates, as ``run``)."""
    sp, rng = truth.sp, np.random.RandomState(rng_offset + seed)
    study = optuna.create_study(direction="maximize", sampler=sampler(strategy, seed, budget, sp, dict(settings or {})))
    fit_no: list[int | None] = []
    keys: list[str] = []

    def objective(ot):
        trial = SearchTrial(ot)
        arch = {lb: trial.choice(lb, list(sp.CANDIDATES)) for lb in sp.LABELS}
        keys.append(sp.arch_key(arch))
        if dedup:
            seen = find_duplicate(study, ot.params, before=ot.number)
            if seen is not None:
                ot.set_user_attr("duplicate_of", seen.number)
                fit_no.append(None)
                return seen.value
        fit_no.append(sum(f is not None for f in fit_no) + 1)
        per_seed = truth.by_key[keys[-1]]["val_acc_per_seed"]
        return float(per_seed[rng.randint(len(per_seed))])

    while sum(f is not None for f in fit_no) < budget and fit_no.count(None) < budget:
        study.optimize(objective, n_trials=1)
    return Run(study, fit_no, keys)


def compare(
    truth: Truth,
    configs: dict[str, tuple[str, dict[str, Any], bool]],
    seeds: list[int],
    budget: int,
    ks: tuple[int, ...] = (3, 1),
    regret_at: tuple[int, ...] = (10, 30),
) -> dict[str, dict[str, Any]]:
    """Per config name (strategy, settings, dedup): the fits-to-target of every seed for each ``k`` in ``ks``, the
    median, the runs reaching it, the mean regret (ground-truth score) of the pick after ``regret_at`` fits."""
    out: dict[str, dict[str, Any]] = {}
    best = truth.score[truth.ranked[0]]
    for name, (strategy, settings, dedup) in configs.items():
        hits = {k: [] for k in ks}
        regret = {n: [] for n in regret_at}
        dups = []
        for seed in seeds:
            r = search(truth, strategy, seed, budget, settings, dedup)
            for k in ks:
                hits[k].append(r.fits_to(truth.top(k), budget))
            for n in regret_at:
                regret[n].append(best - truth.score[r.pick_after(n)])
            dups.append(r.fit_no.count(None))
        out[name] = {
            "hits": hits,
            "median": {k: statistics.median(v) for k, v in hits.items()},
            "reached": {k: sum(h <= budget for h in v) for k, v in hits.items()},
            "regret": {n: float(np.mean(v)) for n, v in regret.items()},
            "duplicates": float(np.mean(dups)),
        }
    return out
