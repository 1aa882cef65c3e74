"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop.

Each callback validates its arguments in ``__init__`` and the model in ``setup()``, keeps its resumable state in
``state_dict()``, and takes the same decisions on every DDP rank. The algorithms live in ``lightning_nas.search``,
``lightning_nas.compress`` and ``lightning_nas.explain``.
"""

from lightning_nas.callbacks.attribution import AttributionMonitor
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.callbacks.distillation import KnowledgeDistillation
from lightning_nas.callbacks.drift import DriftMonitor
from lightning_nas.callbacks.explain import ArchitectureView, DecisionPaths, TrainingDynamics
from lightning_nas.callbacks.lowrank import LowRankFactorization
from lightning_nas.callbacks.nas import DifferentiableNAS, SubnetSampling
from lightning_nas.callbacks.pruning import MagnitudePruning, StructuredPruning
from lightning_nas.callbacks.quantization import QuantizationAware

__all__ = [
    # search
    "DifferentiableNAS",
    "SubnetSampling",
    # compress
    "StructuredPruning",
    "MagnitudePruning",
    "LowRankFactorization",
    "QuantizationAware",
    "KnowledgeDistillation",
    # explain
    "AttributionMonitor",
    "TrainingDynamics",
    "DecisionPaths",
    "ArchitectureView",
    # deploy
    "DriftMonitor",
    # base for your own
    "LightningNASCallback",
]
