"""SPOS' second stage: evolutionary search over the subnets of a trained supernet, BN recalibrated per subnet.

Hand-written (about 50 lines): NNI's evolution strategy drives whole trials, not in-process subnet scoring,
and no maintained library scores subnets of a live supernet.

The search (Guo et al., 2020, SPOS) keeps a population of architectures; each generation the top
``population // 2`` are parents, children are made by uniform crossover of two parents and by mutation
(each decision resampled with probability ``mutation_prob``); every new architecture is scored once (cached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_nas._validate import check_int, check_range

Arch = dict[str, str]


def _key(arch: Mapping[str, str]) -> tuple:
    return tuple(sorted(arch.items()))


def evolutionary_search(
    space: Mapping[str, list[str]],
    score: Callable[[Arch], float],
    *,
    population: int = 10,
    generations: int = 5,
    mutation_prob: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[Arch, list[tuple[Arch, float]]]:
    """Maximise ``score(arch)`` over ``space`` (``{label: candidates}``); return the best and all scored.

    At most ``population * (generations + 1)`` distinct architectures are scored (fewer when the space is
    smaller: a space no larger than that is scored exhaustively).

    Examples:
        >>> import torch
        >>> from lightning_nas.search.oneshot import evolutionary_search
        >>> space = {"a": ["x", "y", "z"], "b": ["x", "y"]}
        >>> score = lambda arch: (arch["a"] == "z") + (arch["b"] == "y")  # higher is better
        >>> best, scored = evolutionary_search(space, score, population=4, generations=2,
        ...                                    generator=torch.Generator().manual_seed(0))
        >>> best, len(scored)  # the 6 architectures fit in population * (generations + 1): scored exhaustively
        ({'a': 'z', 'b': 'y'}, 6)
    """
    check_int("population", population, 2)
    check_int("generations", generations, 0)
    check_range("mutation_prob", mutation_prob, 0.0, 1.0)
    evo = _Evolution(space, score, generator or torch.Generator().manual_seed(0))
    pop = evo.initial(population)
    for _ in range(generations):
        if len(evo.scored) >= evo.total:
            break
        ranked = sorted((evo.scored[_key(a)] for a in pop), key=lambda t: -t[1])
        parents = [a for a, _ in ranked[: max(2, population // 2)]]
        for c in evo.children(parents, population, mutation_prob):
            evo.evaluate(c)
        pop = [a for a, _ in sorted(evo.scored.values(), key=lambda t: -t[1])[:population]]
    history = list(evo.scored.values())
    best = max(history, key=lambda t: t[1])[0]
    return best, history


class _Evolution:
    """The state of one ``evolutionary_search``: the space, the scores so far and the random stream."""

    def __init__(self, space: Mapping[str, list[str]], score: Callable[[Arch], float], gen: torch.Generator):
        self.space, self.score, self.gen = space, score, gen
        self.labels = list(space)
        self.total = 1
        for lb in self.labels:
            self.total *= len(space[lb])
        self.scored: dict[tuple, tuple[Arch, float]] = {}

    def rand_int(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def evaluate(self, arch: Arch) -> None:
        k = _key(arch)
        if k not in self.scored:
            self.scored[k] = (dict(arch), float(self.score(dict(arch))))

    def initial(self, population: int) -> list[Arch]:
        """Up to ``population`` distinct random architectures, scored."""
        pop: list[Arch] = []
        for _ in range(50 * population):
            if len(pop) >= min(population, self.total):
                break
            a = {lb: self.space[lb][self.rand_int(len(self.space[lb]))] for lb in self.labels}
            if _key(a) not in {_key(p) for p in pop}:
                pop.append(a)
        for a in pop:
            self.evaluate(a)
        return pop

    def children(self, parents: list[Arch], population: int, mutation_prob: float) -> list[Arch]:
        """Up to ``population`` unseen architectures: uniform crossover of two parents, then per-choice mutation."""
        children: list[Arch] = []
        for _ in range(50 * population):
            if len(children) >= population or len(self.scored) + len(children) >= self.total:
                break
            p1, p2 = parents[self.rand_int(len(parents))], parents[self.rand_int(len(parents))]
            child = {lb: (p1 if self.rand_int(2) else p2)[lb] for lb in self.labels}
            for lb in self.labels:
                if float(torch.rand(1, generator=self.gen)) < mutation_prob:
                    child[lb] = self.space[lb][self.rand_int(len(self.space[lb]))]
            if _key(child) not in self.scored and _key(child) not in {_key(c) for c in children}:
                children.append(child)
        return children


def recalibrate_batchnorm(model: nn.Module, forward: Callable[[Any], Any], batches: Iterable[Any]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches`` (cumulative average).

    A subnet of a weight-sharing supernet sees different activation statistics than the supernet's running
    averages, so each subnet is scored only after this (SPOS, Sec. 3.3). Returns the number of batches used.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.search.oneshot import recalibrate_batchnorm
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> batches = [torch.randn(8, 2) + 5.0 for _ in range(3)]
        >>> recalibrate_batchnorm(net, net, batches)
        3
        >>> bool((net[1].running_mean.abs() > 0).all()), net.training  # statistics re-estimated; mode restored
        (True, True)
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
        m.train()
    n = 0
    with torch.no_grad():
        for b in batches:
            forward(b)
            n += 1
    for m, momentum, training in saved:
        m.momentum = momentum
        m.train(training)
    return n
