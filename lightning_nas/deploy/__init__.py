"""Measurement (size, MACs, latency), export (ONNX, TorchScript), the model card, bundles, serving and drift.

Every size and speed in lightning_nas comes from here, measured, never derived from a pruning ratio.
"""

from lightning_nas.deploy.bundle import Bundle, BundleError, bundle, load_bundle
from lightning_nas.deploy.card import ModelCard
from lightning_nas.deploy.checkpoint import load_compressed
from lightning_nas.deploy.drift import DriftReport, DriftThresholds, check_drift
from lightning_nas.deploy.export import export, onnx_session
from lightning_nas.deploy.measure import (
    Measurement,
    compare,
    count_macs,
    measure,
    measure_latency,
    serialized_size,
)
from lightning_nas.deploy.profile import ReferenceProfile

__all__ = [
    "Measurement",
    "ModelCard",
    "compare",
    "count_macs",
    "export",
    "measure",
    "measure_latency",
    "onnx_session",
    "serialized_size",
]
__all__ += [
    "Bundle",
    "BundleError",
    "DriftReport",
    "DriftThresholds",
    "ReferenceProfile",
    "bundle",
    "check_drift",
    "load_bundle",
    "load_compressed",
]
