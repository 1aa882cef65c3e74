"""Pure-torch / Captum analyses (no Lightning import) that explain search and compression decisions."""
from lightning_nas.explain import attribution, dynamics, graph, paths
from lightning_nas.explain.attribution import compare

__all__ = ["attribution", "compare", "dynamics", "graph", "paths"]
