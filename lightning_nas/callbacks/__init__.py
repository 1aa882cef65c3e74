"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.callbacks.drift import DriftMonitor

__all__ = ["LightningNASCallback"]
__all__ += ["DriftMonitor"]
