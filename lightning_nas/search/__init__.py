"""Search strategies: one-shot supernets and multi-trial drivers."""

from lightning_nas.search.multitrial import (
    STRATEGIES,
    RegularizedEvolutionSampler,
    ReinforceSampler,
    SearchResult,
    SearchTrial,
    StorageUnreachableError,
    TrialPruningCallback,
    run,
)

__all__ = [
    "STRATEGIES",
    "RegularizedEvolutionSampler",
    "ReinforceSampler",
    "SearchResult",
    "SearchTrial",
    "StorageUnreachableError",
    "TrialPruningCallback",
    "run",
]
