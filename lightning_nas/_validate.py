"""Eager argument validation shared by every public entry point.

Each helper raises ``ValueError`` (or ``TypeError`` for a wrong type) whose message names the argument,
the value received and what is allowed, so a bad configuration fails in ``__init__`` and never in epoch 3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def check_type(name: str, value: Any, types: type | tuple[type, ...], *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return value
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"`{name}` must be {_type_names(types)}, got bool {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"`{name}` must be {_type_names(types)}, got {type(value).__name__} {value!r}")
    return value


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Check ``low (<=|<) value (<=|<) high``; either bound may be ``None``."""
    check_type(name, value, (int, float))
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok) or value != value:  # NaN fails too
        lb = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low}"
        hb = "inf)" if high is None else f"{high}" + ("]" if high_inclusive else ")")
        raise ValueError(f"`{name}` must be in {lb}, {hb}, got {value!r}")
    return value


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    check_type(name, value, int)
    check_range(name, value, low, high)
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
    return value


def schema_errors(cache: list[Any], build: Callable[[], Any], data: Any) -> list[dict[str, Any]]:
    """The pydantic validation errors of ``data`` against the model ``build()`` makes (built once, kept in
    ``cache``), in pydantic's order; ``[]`` when it is valid. Untrusted files (bundle cards, drift profiles) are
    checked this way before any field is used."""
    from pydantic import ValidationError

    if not cache:
        cache.append(build())
    try:
        cache[0].model_validate(data)
    except ValidationError as exc:
        return [dict(e) for e in exc.errors()]
    return []


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)
