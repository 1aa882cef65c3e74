"""Pure-torch / Captum analyses (no Lightning import) that explain search and compression decisions."""
from lightning_nas.explain import attribution, dynamics, graph, paths
from lightning_nas.explain.attribution import compare

__all__ = ["attribution", "compare", "dynamics", "graph", "paths"]
from lightning_nas.explain.agreement import AgreementAccumulator, agreement  # noqa: E402
from lightning_nas.explain.quant_sensitivity import layer_sqnr, quant_sensitivity  # noqa: E402

__all__ = list(globals().get("__all__", [])) + ["AgreementAccumulator", "agreement", "layer_sqnr",
                                                "quant_sensitivity"]
