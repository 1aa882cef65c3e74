"""Pure-torch / Captum analyses (no Lightning import) that explain search and compression decisions."""
from lightning_nas.explain.sensitivity import (  # noqa: E402
    SENSITIVITY_COLUMNS,
    evaluate_accuracy,
    prune_perturbations,
    rank_layers,
    sensitivity_table,
)

__all__ = [*globals().get("__all__", []), "SENSITIVITY_COLUMNS", "evaluate_accuracy", "sensitivity_table",
           "prune_perturbations", "rank_layers"]
