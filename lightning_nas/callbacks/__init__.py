"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback

__all__ = ["LightningNASCallback"]
from lightning_nas.callbacks.pruning import MagnitudePruning, StructuredPruning  # noqa: E402

__all__ += ["StructuredPruning", "MagnitudePruning"]
from lightning_nas.callbacks._structural import load_compressed  # noqa: E402
from lightning_nas.callbacks.lowrank import LowRankFactorization  # noqa: E402

__all__ += ["LowRankFactorization", "load_compressed"]
