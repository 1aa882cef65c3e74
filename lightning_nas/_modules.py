"""Small helpers on ``nn.Module`` shared by every package: name matching and a temporary eval mode.

Hand-written because torch and Lightning have no public equivalent (Lightning's ``_ModuleMode`` is private).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn


def name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``patterns``, inside one (``"features"`` matches ``"features.0"``), or
    matches one as a shell pattern (``"*.downsample.*"``).

    >>> name_matches("features.0", ["features"]), name_matches("head", ["feat*"])
    (True, False)
    """
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block; after it (also when it raises) each module returns to its own
    ``training`` flag, every submodule too, and a submodule added in the block follows its root module.

    >>> m = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2))
    >>> _ = m[1].eval()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training, m[0].training, m[1].training
    (True, True, False)
    """
    roots = [(m, m.training) for m in modules]
    saved = [(sub, sub.training) for m in modules for sub in m.modules()]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was in roots:
            m.train(was)
        for sub, was in saved:
            sub.training = was
