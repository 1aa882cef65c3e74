"""Pure-torch compression algorithms (no Lightning import): pruning, quantization, low-rank, distillation."""

from lightning_nas.compress.distill import FeatureAdapter, feature_loss, kd_loss, load_teacher
from lightning_nas.compress.lowrank import factorize
from lightning_nas.compress.prune import (
    breaking_groups,
    magnitude_prune,
    make_permanent,
    prunable_layers,
    prune_structured,
    replay_pruning,
)
from lightning_nas.compress.quantize import convert_int8, export_int8_onnx, post_training_quantize, prepare_qat

__all__ = [
    "prune_structured",
    "replay_pruning",
    "prunable_layers",
    "breaking_groups",
    "magnitude_prune",
    "make_permanent",
    "factorize",
    "prepare_qat",
    "convert_int8",
    "export_int8_onnx",
    "post_training_quantize",
    "kd_loss",
    "feature_loss",
    "FeatureAdapter",
    "load_teacher",
]
