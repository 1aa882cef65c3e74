"""lightning_nas: search, compress, explain and ship PyTorch Lightning models with callbacks."""
__version__ = "0.1.0"
from lightning_nas import space  # noqa: E402,F401  (search-space vocabulary: lightning_nas.space.LayerChoice, ...)
from lightning_nas.report import build_report  # noqa: E402  (the HTML report of a run)
