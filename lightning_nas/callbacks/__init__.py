"""Thin Lightning callbacks: *when* to search, compress and explain on the user's own training loop."""
from lightning_nas.callbacks.base import LightningNASCallback

__all__ = ["LightningNASCallback"]
from lightning_nas.callbacks.distillation import KnowledgeDistillation  # noqa: E402
from lightning_nas.callbacks.quantization import QuantizationAware  # noqa: E402

__all__ += ["KnowledgeDistillation", "QuantizationAware"]
