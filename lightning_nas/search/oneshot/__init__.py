"""One-shot NAS: mixed ops, the supernet controller (DARTS, GDAS, SPOS) and SPOS' evolutionary subnet search."""

from lightning_nas.search.oneshot.evolution import evolutionary_search, recalibrate_batchnorm
from lightning_nas.search.oneshot.mixed import MixedInput, MixedLayer
from lightning_nas.search.oneshot.supernet import MODES, REMEDIES, SAMPLINGS, Supernet, gdas_temperature

__all__ = [
    "MODES",
    "REMEDIES",
    "SAMPLINGS",
    "MixedInput",
    "MixedLayer",
    "Supernet",
    "evolutionary_search",
    "gdas_temperature",
    "recalibrate_batchnorm",
]
