"""The choice primitives: ``LayerChoice``, ``InputChoice``, ``ValueChoice`` and the build-time context.

A model with choices is an ordinary ``nn.Module`` that runs: before anything freezes it, a ``LayerChoice``
runs its *active* candidate (the first one, unless built under ``fixed_arch``) and an ``InputChoice`` takes
its first ``n_chosen`` inputs, so a plain ``trainer.fit`` works unchanged.

``ValueChoice`` is read at construction: it returns a plain Python value (an ``int`` stays an ``int`` and can
be a width), the first of ``values`` unless an enclosing ``fixed_arch({label: value})`` says otherwise. This is
how a multi-trial search resolves it at build time (``lightning_nas.space.build(fn, arch)``); a one-shot
supernet cannot change a value after construction.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lightning_nas._validate import check_choice, check_int, check_type

_REDUCTIONS = ("sum", "mean", "concat", "none")
_FIXED: list[Mapping[str, Any]] = []  # stack of active fixed_arch samples
_RECORDERS: list[dict[str, tuple[list[Any], Any]]] = []  # stack of active ValueChoice recorders
_NAME_RE = re.compile(r"^[^.]+$")


def _check_label(label: Any) -> str:
    check_type("label", label, str)
    if not label or "/" in label:
        raise ValueError(f"`label` must be a non-empty string without '/', got {label!r}")
    return label


def _fixed_value(label: str) -> Any:
    for sample in reversed(_FIXED):
        if label in sample:
            return sample[label]
    return _MISSING


_MISSING = object()


@contextmanager
def fixed_arch(arch: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Inside this block, choices built read their decision from ``arch``.

    ``ValueChoice(values, label)`` returns ``arch[label]``; a ``LayerChoice``/``InputChoice`` makes
    ``arch[label]`` its active candidate. Labels absent from ``arch`` keep their default (the first).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> with space.fixed_arch({"width": 32}):
        ...     conv = nn.Conv2d(1, space.ValueChoice([16, 32], label="width"), 3)
        >>> conv.out_channels
        32
    """
    check_type("arch", arch, Mapping)
    _FIXED.append(dict(arch))
    try:
        yield arch
    finally:
        _FIXED.pop()


@contextmanager
def recording() -> Iterator[dict[str, tuple[list[Any], Any]]]:
    """Collect every ``ValueChoice`` made inside the block: ``{label: (values, chosen value)}``.

    Examples:
        >>> from lightning_nas import space
        >>> with space.recording() as seen:
        ...     width = space.ValueChoice([16, 32], label="width")
        >>> seen
        {'width': ([16, 32], 16)}
    """
    rec: dict[str, tuple[list[Any], Any]] = {}
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.pop()


def ValueChoice(values: Sequence[Any], label: str) -> Any:
    """A plain value chosen from ``values`` (first by default; ``fixed_arch``/``build`` pick another).

    Returns the value itself, so ``nn.Conv2d(1, ValueChoice([16, 32], label="width"), 3)`` is ordinary code.
    The same label may be read several times (a tied decision) if ``values`` are equal each time.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> def make():
        ...     return nn.Conv2d(1, space.ValueChoice([16, 32], label="width"), 3)
        >>> make().out_channels  # outside a search: the first value, as an int
        16
        >>> space.build(make, {"width": 32}).out_channels
        32
    """
    label = _check_label(label)
    check_type("values", values, (list, tuple))
    values = list(values)
    if len(values) < 2:
        raise ValueError(f"ValueChoice {label!r}: `values` needs at least 2 candidates, got {values!r}")
    if len({repr(v) for v in values}) != len(values):
        raise ValueError(f"ValueChoice {label!r}: `values` must be distinct, got {values!r}")
    chosen = _fixed_value(label)
    if chosen is _MISSING:
        chosen = values[0]
    elif chosen not in values:
        raise ValueError(f"fixed_arch gives {label!r}={chosen!r}, which is not one of {values!r}")
    for rec in _RECORDERS:
        if label in rec and rec[label][0] != values:
            raise ValueError(
                f"label {label!r} is used by ValueChoices with different values: {rec[label][0]!r} and {values!r}"
            )
        rec[label] = (values, chosen)
    return chosen


class ChoiceModule(nn.Module):
    """Protocol of a module that holds one labelled decision (choices and one-shot mixed ops).

    ``label``; ``kind`` (``"layer"`` or ``"input"``); ``candidate_names()``; ``frozen(name)`` returns the
    plain module that replaces this one when ``name`` is chosen.
    """

    label: str
    kind: str

    def candidate_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frozen(self, name: str) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError


class LayerChoice(ChoiceModule):
    """One of several candidate layers, chosen by the search.

    Args:
        candidates: ``{name: module}`` or a list of modules (named ``"0"``, ``"1"``, ...); at least 2.
        label: the decision's name (``nas/<label>/...`` in logs; the key in an architecture dict). Choices
            sharing a label and candidate names are one tied decision.

    Before freezing, ``forward`` runs the active candidate (the first, or ``fixed_arch``'s).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> import torch
        >>> net(torch.rand(2, 1, 8, 8)).shape  # before any search the first candidate runs: an ordinary module
        torch.Size([2, 10])
        >>> space.choices(net)
        {'block1': ['conv3', 'skip']}
    """

    kind = "layer"

    def __init__(self, candidates: dict[str, nn.Module] | list[nn.Module], label: str) -> None:
        super().__init__()
        self.label = _check_label(label)
        check_type("candidates", candidates, (dict, list, tuple, nn.ModuleDict, nn.ModuleList))
        items = (
            list(candidates.items())
            if isinstance(candidates, (dict, nn.ModuleDict))
            else [(str(i), m) for i, m in enumerate(candidates)]
        )
        if len(items) < 2:
            raise ValueError(f"LayerChoice {label!r}: `candidates` needs at least 2 modules, got {len(items)}")
        for name, m in items:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(
                    f"LayerChoice {label!r}: candidate names must be non-empty strings without '.', got {name!r}"
                )
            if not isinstance(m, nn.Module):
                raise TypeError(
                    f"LayerChoice {label!r}: candidate {name!r} must be an nn.Module, got {type(m).__name__}"
                )
        self.candidates = nn.ModuleDict(dict(items))
        fixed = _fixed_value(label)
        self.active = items[0][0] if fixed is _MISSING else check_choice(f"arch[{label!r}]", fixed, self.names)

    @property
    def names(self) -> list[str]:
        return list(self.candidates.keys())

    def candidate_names(self) -> list[str]:
        return self.names

    def frozen(self, name: str) -> nn.Module:
        return self.candidates[name]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.candidates[self.active](*args, **kwargs)

    def extra_repr(self) -> str:
        return f"label={self.label!r}, active={self.active!r}"


def input_combinations(n_candidates: int, n_chosen: int) -> list[tuple[int, ...]]:
    """The candidate input subsets of an ``InputChoice``, in order; named ``"0+2"`` etc."""
    return list(itertools.combinations(range(n_candidates), n_chosen))


def combo_name(combo: Sequence[int]) -> str:
    return "+".join(str(i) for i in combo)


def reduce_inputs(tensors: list[torch.Tensor], reduction: str) -> Any:
    if reduction == "none":
        return tensors if len(tensors) > 1 else tensors[0]
    if len(tensors) == 1:
        return tensors[0]
    if reduction == "concat":
        return torch.cat(tensors, dim=1)
    out = torch.stack(tensors).sum(0)
    return out / len(tensors) if reduction == "mean" else out


class SelectInputs(nn.Module):
    """A frozen input choice: picks fixed inputs from a list and reduces them (plain, exportable).

    Examples:
        >>> import torch
        >>> from lightning_nas.space import SelectInputs
        >>> SelectInputs([0, 2], reduction="concat")([torch.zeros(1, 1), torch.ones(1, 1), 2 * torch.ones(1, 1)])
        tensor([[0., 2.]])
    """

    def __init__(self, indices: Sequence[int], reduction: str = "sum") -> None:
        super().__init__()
        self.indices = [int(i) for i in indices]
        self.reduction = check_choice("reduction", reduction, _REDUCTIONS)

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        return reduce_inputs([inputs[i] for i in self.indices], self.reduction)

    def extra_repr(self) -> str:
        return f"indices={self.indices}, reduction={self.reduction!r}"


class InputChoice(ChoiceModule):
    """Choose ``n_chosen`` of ``n_candidates`` input tensors (e.g. which earlier cell feeds this one).

    Called with a list of ``n_candidates`` tensors; the chosen ones are reduced (``"sum"``, ``"mean"``,
    ``"concat"`` on dim 1, or ``"none"``). Each subset is one candidate, named by its indices (``"0"``,
    ``"0+2"``), so an ``InputChoice(3, 2)`` has 3 candidates.

    Examples:
        >>> import torch
        >>> from lightning_nas import space
        >>> merge = space.InputChoice(3, n_chosen=2, label="merge")
        >>> space.choices(merge)  # every subset of 2 of the 3 inputs is one candidate
        {'merge': ['0+1', '0+2', '1+2']}
        >>> a, b, c = torch.ones(1, 2), 2 * torch.ones(1, 2), 3 * torch.ones(1, 2)
        >>> merge([a, b, c])  # the active (first) candidate: inputs 0 and 1, summed
        tensor([[3., 3.]])
        >>> space.freeze(merge, {"merge": "1+2"})([a, b, c])
        tensor([[5., 5.]])
    """

    kind = "input"

    def __init__(self, n_candidates: int, n_chosen: int = 1, *, label: str, reduction: str = "sum") -> None:
        super().__init__()
        self.label = _check_label(label)
        check_int("n_candidates", n_candidates, 2)
        check_int("n_chosen", n_chosen, 1, n_candidates - 1)
        self.n_candidates, self.n_chosen = n_candidates, n_chosen
        self.reduction = check_choice("reduction", reduction, _REDUCTIONS)
        self._combos = input_combinations(n_candidates, n_chosen)
        fixed = _fixed_value(label)
        self.active = (
            combo_name(self._combos[0])
            if fixed is _MISSING
            else check_choice(f"arch[{label!r}]", fixed, self.candidate_names())
        )

    def candidate_names(self) -> list[str]:
        return [combo_name(c) for c in self._combos]

    def frozen(self, name: str) -> nn.Module:
        return SelectInputs(self._combos[self.candidate_names().index(name)], self.reduction)

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}")
        return self.frozen(self.active)(inputs)

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen={self.n_chosen}, "
            f"reduction={self.reduction!r}, active={self.active!r}"
        )
