"""Pure-torch compression algorithms (no Lightning import): pruning, quantization, low-rank, distillation."""
from lightning_nas.compress.distill import FeatureAdapter, feature_loss, kd_loss, load_teacher  # noqa: E402
from lightning_nas.compress.quantize import (  # noqa: E402
    convert_int8,
    export_int8_onnx,
    post_training_quantize,
    prepare_qat,
)

__all__ = list(globals().get("__all__", [])) + ["FeatureAdapter", "convert_int8", "export_int8_onnx", "feature_loss", "kd_loss",
                                                "load_teacher", "post_training_quantize", "prepare_qat"]
