"""Pure-torch compression algorithms (no Lightning import): pruning, quantization, low-rank, distillation."""
from lightning_nas.compress.lowrank import factorize  # noqa: E402
from lightning_nas.compress.prune import (  # noqa: E402
    magnitude_prune,
    make_permanent,
    prunable_layers,
    prune_structured,
    replay_pruning,
)

__all__ = [*globals().get("__all__", []), "prune_structured", "replay_pruning", "prunable_layers",
           "magnitude_prune", "make_permanent", "factorize"]
