"""Reading files that came from elsewhere (checkpoints, bundles, run folders): data, never code.

* ``load_weights``: ``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers only;
  an object whose unpickling would run code is refused before anything runs.
* ``inside``: the one way to join a name read from a file onto the folder it came from; refuses absolute
  names, ``..``, and anything (symlinks included) that resolves outside the folder.
* ``image_type``: ``"png"``/``"jpeg"`` from a file's leading bytes (its name and extension are not trusted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class UnsafePathError(ValueError):
    """A name read from a file points outside the folder it belongs to."""


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # torch's weights_only message starts with advice to switch the check off: show the reason instead
    why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
    return why[:240] or type(exc).__name__


def load_weights(path: str | Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; ``ValueError`` (one line) when the file
    needs anything beyond tensors and plain containers, or is not a torch file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{what} {str(path)!r} cannot be loaded with weights_only=True (it holds objects other "
            f"than tensors and plain containers, or is not a torch file): {_first_line(exc)}"
        ) from None


def inside(root: str | Path, name: Any, what: str = "file") -> Path:
    """``root / name`` resolved, provided ``name`` is a relative path whose target (symlinks followed) lies
    inside ``root``; ``UnsafePathError`` otherwise. The target need not exist."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{what} name {name!r} is not a non-empty relative path")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"{what} name {name!r} is an absolute path; only names inside the folder are read")
    base = Path(root).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} name {name!r} points outside {str(base)!r}; refusing to read it")
    return target


def image_type(data: bytes) -> str | None:
    """``"png"`` or ``"jpeg"`` when ``data`` starts like one, else ``None``."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


__all__ = ["UnsafePathError", "image_type", "inside", "load_weights"]
