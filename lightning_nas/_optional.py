"""Optional dependencies (the extras in ``pyproject.toml``): a missing one is one line naming the extra to install.

``require("fastapi", extra="serve", feature="lightning-nas serve")`` imports and returns the module, or raises
``MissingExtraError`` (an ``ImportError``) whose message is the single line
``lightning-nas serve needs fastapi: pip install "lightning-nas[serve]"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


def install_hint(extra: str) -> str:
    return f'pip install "lightning-nas[{extra}]"'


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (an optional dependency of ``feature``, installed by the extra ``extra``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: not a missing extra
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: {install_hint(extra)}"
        ) from None
