"""lightning_nas: search, compress, explain and ship PyTorch Lightning models with callbacks.

Packages: ``space`` (choices inside any nn.Module), ``search`` (one-shot and multi-trial), ``compress``,
``explain``, ``callbacks``, ``tracking``, ``deploy``, ``data``. See README.md and the guides under docs/
(``make docs`` builds the site).
"""

__version__ = "0.1.0"

from lightning_nas import space
from lightning_nas.report import build_report

__all__ = ["__version__", "build_report", "space"]
