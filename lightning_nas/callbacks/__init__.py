"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback

__all__ = ["LightningNASCallback"]
