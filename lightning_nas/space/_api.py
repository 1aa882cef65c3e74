"""Reading and fixing a search space: ``choices``, ``size``, ``architectures``, ``freeze``, ``build``.

Everything here recognises this package's choices, the one-shot mixed ops that replace them during a search
(any ``ChoiceModule``), and NNI's ``nni.nas.nn.pytorch.LayerChoice``/``InputChoice`` (NNI is an optional
extra; it is never imported unless a model holds one of its modules).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_nas._validate import check_type
from lightning_nas.space._choices import (
    ChoiceModule,
    SelectInputs,
    combo_name,
    fixed_arch,
    input_combinations,
    recording,
)

_VALUES_ATTR = "_lightning_nas_values"


@dataclass
class ChoiceView:
    """A uniform view of one choice module: ``label``, ``kind``, candidate ``names``, ``frozen(name)``."""

    label: str
    kind: str
    names: list[str]
    frozen: Callable[[str], nn.Module]
    module: nn.Module


@dataclass
class Decision:
    """One labelled decision of a space: its candidates and where it occurs (several paths = tied)."""

    label: str
    kind: str  # "layer" | "input" | "value"
    candidates: list[Any]
    paths: list[str] = field(default_factory=list)


def _is_nni(module: nn.Module, cls_name: str) -> bool:
    t = type(module)
    return t.__module__.startswith("nni.") and any(
        c.__name__ == cls_name and c.__module__.startswith("nni.") for c in t.__mro__
    )


def as_choice(module: nn.Module) -> ChoiceView | None:
    """The ``ChoiceView`` of ``module`` when it is a choice (ours, a mixed op, or NNI's), else ``None``.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> view = space.as_choice(net[1])
        >>> view.label, view.kind, view.names
        ('block1', 'layer', ['conv3', 'skip'])
        >>> space.as_choice(net[0]) is None
        True
    """
    if isinstance(module, ChoiceModule):
        return ChoiceView(module.label, module.kind, module.candidate_names(), module.frozen, module)
    nni: Any = module  # NNI's choices: their attributes are not typed here (NNI is optional)
    if _is_nni(module, "LayerChoice"):
        by_name = {str(n): n for n in nni.names}
        if len(by_name) < 2:
            raise ValueError(f"NNI LayerChoice {module.label!r} needs at least 2 candidates, got {list(by_name)}")
        return ChoiceView(nni.label, "layer", list(by_name), lambda name: nni[by_name[name]], module)
    if _is_nni(module, "InputChoice"):
        if module.n_chosen is None:
            raise ValueError(
                f"NNI InputChoice {module.label!r}: n_chosen=None (any number) is not supported; give an int n_chosen"
            )
        combos = input_combinations(nni.n_candidates, nni.n_chosen)
        names = [combo_name(c) for c in combos]
        if len(names) < 2:
            raise ValueError(f"NNI InputChoice {module.label!r} has fewer than 2 candidate subsets")
        reduction = str(module.reduction)
        return ChoiceView(
            nni.label, "input", names, lambda name: SelectInputs(combos[names.index(name)], reduction), module
        )
    return None


def named_choices(model: nn.Module) -> list[tuple[str, ChoiceView]]:
    """Every choice module in ``model`` (depth first, nested ones included) with its module path.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> [(path, view.label) for path, view in space.named_choices(net)]
        [('1', 'block1')]
    """
    out = []
    for path, m in model.named_modules():
        view = as_choice(m)
        if view is not None:
            out.append((path, view))
    return out


def decisions(model: nn.Module) -> dict[str, Decision]:
    """Every labelled decision in ``model``; raises if one label is used with different candidates.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> space.decisions(net)["block1"]
        Decision(label='block1', kind='layer', candidates=['conv3', 'skip'], paths=['1'])
    """
    check_type("model", model, nn.Module)
    out: dict[str, Decision] = {}
    for path, view in named_choices(model):
        d = out.get(view.label)
        if d is None:
            out[view.label] = Decision(view.label, view.kind, list(view.names), [path])
        elif d.candidates != view.names or d.kind != view.kind:
            raise ValueError(
                f"label {view.label!r} is used by choices with different candidates: "
                f"{d.candidates} at {d.paths[0]!r} and {view.names} at {path!r}; the same label "
                "ties choices to one decision, so their candidate names must match"
            )
        else:
            d.paths.append(path)
    for label, (values, _chosen) in getattr(model, _VALUES_ATTR, {}).items():
        if label in out:
            raise ValueError(f"label {label!r} is used by a ValueChoice and by a {out[label].kind} choice")
        out[label] = Decision(label, "value", list(values), ["<constructor>"])
    return out


def choices(model: nn.Module) -> dict[str, list[Any]]:
    """``{label: candidates}`` for every decision of ``model`` (tied choices appear once).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> space.choices(net)
        {'block1': ['conv3', 'skip']}
    """
    return {label: d.candidates for label, d in decisions(model).items()}


def size(model: nn.Module) -> int:
    """Number of distinct architectures: the product of each decision's candidate count (1 if none).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(space.LayerChoice([nn.ReLU(), nn.Tanh(), nn.GELU()], label="act"),
        ...                     space.InputChoice(2, label="merge"))
        >>> space.size(net)  # 3 activations x 2 inputs
        6
        >>> space.size(nn.Linear(2, 2))  # no decisions: one architecture
        1
    """
    return math.prod(len(c) for c in choices(model).values())


def architectures(model: nn.Module) -> list[dict[str, Any]]:
    """Every architecture of ``model`` as ``{label: candidate}``, in a fixed order (first candidates first).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> space.architectures(net)
        [{'block1': 'conv3'}, {'block1': 'skip'}]
    """
    space = choices(model)
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]


def _check_arch(model: nn.Module, arch: Mapping[str, Any]) -> dict[str, Decision]:
    check_type("arch", arch, Mapping)
    decs = decisions(model)
    missing = [lb for lb, d in decs.items() if lb not in arch and d.kind != "value"]
    extra = [lb for lb in arch if lb not in decs]
    if missing:
        raise ValueError(f"`arch` lacks label(s) {missing}; the model's decisions are {list(decs)}")
    if extra:
        raise ValueError(f"`arch` has unknown label(s) {extra}; the model's decisions are {list(decs)}")
    for label, d in decs.items():
        if d.kind == "value" and label not in arch:
            continue  # a ValueChoice may be omitted: it keeps the value the model was built with
        value = arch[label]
        if d.kind == "value":
            built = getattr(model, _VALUES_ATTR)[label][1]
            if value != built:
                raise ValueError(
                    f"ValueChoice {label!r} was built as {built!r} and cannot become {value!r} after "
                    "construction; rebuild with lightning_nas.space.build(fn, arch)"
                )
        elif str(value) not in d.candidates:
            raise ValueError(f"`arch[{label!r}]` = {value!r} is not a candidate; allowed: {d.candidates}")
    return decs


def _replace_choices(module: nn.Module, arch: Mapping[str, Any]) -> nn.Module:
    view = as_choice(module)
    while view is not None:
        module = view.frozen(str(arch[view.label]))
        view = as_choice(module)
    for name, child in list(module.named_children()):
        new = _replace_choices(child, arch)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze(model: nn.Module, arch: Mapping[str, Any], *, inplace: bool = False) -> nn.Module:
    """A plain module with the chosen candidate in place of every choice (no search machinery left).

    Args:
        model: a module with choices (ours, NNI's, or the mixed ops of a running search).
        arch: ``{label: candidate}`` for exactly the model's decisions (``choices(model)``); ``ValueChoice``
            labels may be omitted (they keep the value the model was built with).
        inplace: modify ``model`` instead of a deep copy.

    Raises ``ValueError`` for a missing, extra or unknown label, or a candidate the label does not have.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> plain = space.freeze(net, {"block1": "skip"})  # a deep copy; net keeps its choice
        >>> type(plain[1]).__name__, space.size(plain)
        ('Identity', 1)
        >>> space.freeze(net, {"block1": "conv7"})
        Traceback (most recent call last):
        ...
        ValueError: ...
    """
    check_type("model", model, nn.Module)
    _check_arch(model, arch)
    if not inplace:
        memo = {id(getattr(model, a)): None for a in ("_trainer", "_fabric") if getattr(model, a, None) is not None}
        model = copy.deepcopy(model, memo)
    frozen = _replace_choices(model, arch)
    if hasattr(frozen, _VALUES_ATTR):
        delattr(frozen, _VALUES_ATTR)
    return frozen


def build(fn: Callable[[], nn.Module], arch: Mapping[str, Any] | None = None) -> nn.Module:
    """Call ``fn()`` with ``arch`` fixed: ``ValueChoice`` reads its value, choices are frozen to theirs.

    With ``arch=None`` the model keeps its choices (defaults active) and remembers the ``ValueChoice``s
    read while it was built, so ``choices``/``size``/``architectures`` list them too. With an ``arch``
    covering every decision, the result is frozen (a plain module). This is the multi-trial entry point:
    ``space.build(make_model, {"width": 32, "block1": "conv5"})``.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> def make():
        ...     w = space.ValueChoice([8, 16], label="width")
        ...     return nn.Sequential(nn.Linear(4, w),
        ...                          space.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act"))
        >>> space.choices(space.build(make))  # arch=None: the choices stay, ValueChoices are remembered
        {'act': ['relu', 'tanh'], 'width': [8, 16]}
        >>> space.build(make, {"width": 16, "act": "tanh"})  # frozen: a plain module
        Sequential(
          (0): Linear(in_features=4, out_features=16, bias=True)
          (1): Tanh()
        )
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be a callable returning an nn.Module, got {type(fn).__name__}")
    arch = {} if arch is None else arch
    with fixed_arch(arch), recording() as rec:
        model = fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`fn` must return an nn.Module, got {type(model).__name__}")
    if rec:
        object.__setattr__(model, _VALUES_ATTR, dict(rec))
    if arch:
        return freeze(model, arch, inplace=True)
    return model


def search_space(fn: Callable[[], nn.Module]) -> dict[str, list[Any]]:
    """``{label: candidates}`` of the model ``fn()`` builds, ``ValueChoice``s included.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> def make():
        ...     w = space.ValueChoice([8, 16], label="width")
        ...     return nn.Sequential(nn.Linear(4, w),
        ...                          space.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act"))
        >>> space.search_space(make)
        {'act': ['relu', 'tanh'], 'width': [8, 16]}
    """
    return choices(build(fn))
