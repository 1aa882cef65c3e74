"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback

__all__ = ["LightningNASCallback"]
from lightning_nas.callbacks.attribution import AttributionMonitor  # noqa: E402

__all__ += ["AttributionMonitor"]
from lightning_nas.callbacks.explain import ArchitectureView, DecisionPaths, TrainingDynamics  # noqa: E402

__all__ += ["ArchitectureView", "DecisionPaths", "TrainingDynamics"]
