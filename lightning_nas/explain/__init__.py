"""Pure-torch / Captum analyses (no Lightning import) that explain search and compression decisions."""

from lightning_nas.explain import attribution, dynamics, graph, paths
from lightning_nas.explain.agreement import Agreement, AgreementAccumulator, agreement
from lightning_nas.explain.attribution import compare
from lightning_nas.explain.quant_sensitivity import layer_sqnr, quant_sensitivity
from lightning_nas.explain.sensitivity import (
    SENSITIVITY_COLUMNS,
    evaluate_accuracy,
    prune_perturbations,
    rank_layers,
    sensitivity_table,
)

__all__ = [
    "attribution",
    "compare",
    "dynamics",
    "graph",
    "paths",
    "Agreement",
    "AgreementAccumulator",
    "agreement",
    "SENSITIVITY_COLUMNS",
    "evaluate_accuracy",
    "sensitivity_table",
    "prune_perturbations",
    "rank_layers",
    "layer_sqnr",
    "quant_sensitivity",
]
