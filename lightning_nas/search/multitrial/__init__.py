"""Multi-trial search on Optuna: one ordinary Lightning fit per trial.

``run(build, datamodule, objectives=..., n_trials=..., strategy=...)`` with strategies ``random``, ``grid``,
``tpe``, ``gp`` (Optuna), ``nsga2`` (Optuna, multi-objective), ``evolution`` (regularized evolution) and
``reinforce`` (a policy-gradient controller), pruning of bad trials, measured-cost objectives, storage URLs for
many workers, resume, and a W&B explanation of the study.
"""

from lightning_nas.search.multitrial._driver import (
    PRUNERS,
    STRATEGIES,
    SearchResult,
    make_pruner,
    make_sampler,
    run,
)
from lightning_nas.search.multitrial._evolution import RegularizedEvolutionSampler
from lightning_nas.search.multitrial._explain import importances, pareto_figure
from lightning_nas.search.multitrial._objectives import COSTS
from lightning_nas.search.multitrial._pruning import TrialPruningCallback
from lightning_nas.search.multitrial._reinforce import ReinforceSampler
from lightning_nas.search.multitrial._storage import StorageUnreachableError, open_storage
from lightning_nas.search.multitrial._trial import SearchTrial, record_search_space
from lightning_nas.search.multitrial._trial_fit import find_duplicate

__all__ = [
    "COSTS",
    "PRUNERS",
    "STRATEGIES",
    "RegularizedEvolutionSampler",
    "ReinforceSampler",
    "SearchResult",
    "SearchTrial",
    "StorageUnreachableError",
    "TrialPruningCallback",
    "find_duplicate",
    "importances",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "pareto_figure",
    "record_search_space",
    "run",
]
