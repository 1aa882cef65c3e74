"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.callbacks.drift import DriftMonitor

__all__ = ["LightningNASCallback"]
__all__ += ["DriftMonitor"]
from lightning_nas.callbacks.nas import DifferentiableNAS, SubnetSampling  # noqa: E402

__all__ += ["DifferentiableNAS", "SubnetSampling"]
from lightning_nas.search.multitrial import TrialPruningCallback  # noqa: E402

__all__ += ["TrialPruningCallback"]
from lightning_nas.callbacks.attribution import AttributionMonitor  # noqa: E402

__all__ += ["AttributionMonitor"]
from lightning_nas.callbacks.explain import ArchitectureView, DecisionPaths, TrainingDynamics  # noqa: E402

__all__ += ["ArchitectureView", "DecisionPaths", "TrainingDynamics"]
from lightning_nas.callbacks.distillation import KnowledgeDistillation  # noqa: E402
from lightning_nas.callbacks.quantization import QuantizationAware  # noqa: E402

__all__ += ["KnowledgeDistillation", "QuantizationAware"]
