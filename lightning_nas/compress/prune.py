"""Pruning algorithms (pure torch, no Lightning): structured channel removal and unstructured magnitude masks.

Structured pruning goes through Torch-Pruning's dependency graph: removing output channel ``i`` of a conv
also removes input channel ``i`` of every consumer, the matching BatchNorm entries, both sides of a residual
add, the right slice of a concatenation, grouped/depthwise convs and ``nn.MultiheadAttention`` dims. The
model is *physically* smaller afterwards (fewer parameters, fewer MACs, lower latency).

Every structural change is recorded by Torch-Pruning's own pruning history (``BasePruner.pruning_history()``,
``(layer, is_out_channels, idxs)`` in the order applied), kept here as JSON-friendly ``PruneStep(layer,
direction, idxs)`` records; ``replay_pruning`` hands them back to ``DependencyGraph.load_pruning_history`` to
reproduce the exact architecture on a fresh, unpruned instance of the same model (the weights are then loaded
over it: this is how checkpoints resume across pruning).

Importance of channel ``c`` of a group (all coupled parameters ``W_k``, summed over the group):

* ``"l1"`` / ``"l2"``: ``sum_k ||W_k[c]||_p`` (magnitude);
* ``"bn_scale"``: ``|gamma_c|`` of the BatchNorm in the group (network slimming);
* ``"taylor"``: ``sum_k |sum_j W_k[c, j] * dL/dW_k[c, j]|`` (first-order Taylor estimate of the loss change
  when the channel is removed); needs ``.grad`` populated on the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import prune as _tprune

from lightning_nas._modules import eval_mode, name_matches
from lightning_nas._validate import check_choice, check_range, check_type

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the layers whose output channels are pruned

# (args, kwargs) given to ``model(*args, **kwargs)`` when tracing the dependency graph.
ExampleInputs = Any
# ``forward_fn(model, example_inputs)`` runs the model on the example (default ``model(*args, **kwargs)``); a
# caller passes its own when the inputs go to a submodule, or through several (a backbone, then a head).
ForwardFn = Callable[[nn.Module, ExampleInputs], Any]


@dataclass
class PruneStep:
    """One structural change: remove channels ``idxs`` of ``layer`` (``direction`` "out" or "in" channels).

    One entry of Torch-Pruning's pruning history, named so that it reads in a checkpoint and in JSON."""

    layer: str
    direction: str
    idxs: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    """What ``prune_structured`` did: the steps (for replay) and per-layer importance of every channel."""

    steps: list[PruneStep] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # importance of every channel before
    removed: dict[str, list[int]] = field(default_factory=dict)  # channel indices removed (pre-step indexing)


def _as_args(example_inputs: ExampleInputs) -> tuple[tuple, dict]:
    if (
        isinstance(example_inputs, tuple)
        and len(example_inputs) == 2
        and isinstance(example_inputs[1], dict)
        and isinstance(example_inputs[0], tuple)
    ):
        return example_inputs
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _forward_fn(model: nn.Module, inputs: ExampleInputs) -> Any:
    args, kwargs = _as_args(inputs)
    return model(*args, **kwargs)


def _run(model: nn.Module, example_inputs: ExampleInputs, forward_fn: ForwardFn | None = None) -> Any:
    with eval_mode(model):
        with torch.no_grad():
            return (forward_fn or _forward_fn)(model, example_inputs)


def find_output_layer(
    model: nn.Module, example_inputs: ExampleInputs, forward_fn: ForwardFn | None = None
) -> str | None:
    """Name of the last ``Linear``/``Conv`` executed in a forward pass: the layer producing the logits."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]
    try:
        _run(model, example_inputs, forward_fn)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _graph(model: nn.Module, example_inputs: ExampleInputs, forward_fn: ForwardFn | None = None) -> Any:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example_inputs, forward_fn=forward_fn or _forward_fn
    )


def _ignored_modules(
    model: nn.Module, example_inputs: ExampleInputs, ignore: Sequence[str], forward_fn: ForwardFn | None = None
) -> list[nn.Module]:
    out = find_output_layer(model, example_inputs, forward_fn)
    names = list(ignore) + ([out] if out else [])
    return [m for n, m in model.named_modules() if n and name_matches(n, names)]


def prunable_layers(
    model: nn.Module, example_inputs: ExampleInputs, ignore: Sequence[str] = (), forward_fn: ForwardFn | None = None
) -> dict[str, int]:
    """``{layer: output channels}`` of every group root that may be pruned (output layer and ``ignore`` excluded).

    Only layers the forward runs count (``forward_fn(model, example_inputs)``, default ``model(*args, **kwargs)``).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prunable_layers
        >>> from lightning_nas.models import DigitsCNN
        >>> sorted(prunable_layers(DigitsCNN(width=8), torch.rand(2, 1, 8, 8)).items())  # never the logits layer
        [('features.0', 8), ('features.3', 16)]
        >>> prunable_layers(DigitsCNN(width=8), torch.rand(2, 1, 8, 8), ignore=["features.3"])
        {'features.0': 8}
    """
    dg = _graph(model, example_inputs, forward_fn)
    names = {m: n for n, m in model.named_modules()}
    ignored = _ignored_modules(model, example_inputs, ignore, forward_fn)
    out: dict[str, int] = {}
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=list(ROOT_TYPES)):
        root = group[0].dep.target.module
        out[names[root]] = len(group[0].idxs)
    return out


def _importance(name: str) -> Any:
    import torch_pruning as tp

    check_choice("importance", name, IMPORTANCES)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def prune_structured(
    model: nn.Module,
    example_inputs: ExampleInputs,
    amount: float | Mapping[str, float],
    importance: str = "l1",
    global_pruning: bool = False,
    ignore: Sequence[str] = (),
    round_to: int | None = None,
    forward_fn: ForwardFn | None = None,
) -> PruneResult:
    """Physically remove a fraction of the channels of every prunable layer of ``model`` (in place).

    Args:
        model: any ``nn.Module``; its classifier output (last Linear/Conv run) is never pruned.
        example_inputs: a tensor, a tuple of positional tensors, or ``((args...), {kwargs})``.
        amount: fraction in ``[0, 1)`` of the *current* channels to remove (global or per layer), or
            ``{layer_name: fraction}`` to prune only those layers by their own fraction.
        importance: one of ``IMPORTANCES``.
        global_pruning: rank channels across all layers (layers lose different fractions) instead of per layer.
        ignore: layer names (or prefixes / glob patterns) to keep whole.
        round_to: keep channel counts a multiple of this (hardware-friendly).
        forward_fn: ``forward_fn(model, example_inputs)`` runs the model (default ``model(*args, **kwargs)``).

    Returns:
        a ``PruneResult`` with the replayable steps and the importance of every channel of each pruned layer.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prune_structured
        >>> from lightning_nas.models import DigitsCNN
        >>> net = DigitsCNN(width=8)
        >>> result = prune_structured(net, torch.rand(2, 1, 8, 8), amount=0.5)
        >>> net.features[0].out_channels, net.features[3].out_channels, net.classifier.out_features
        (4, 8, 10)
        >>> sorted(result.removed), len(result.scores["features.0"])  # importance of all 8 channels before
        (['features.0', 'features.3'], 8)
        >>> net(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    result = _prune(model, example_inputs, amount, importance, global_pruning, ignore, round_to, forward_fn)
    if result.steps:
        _check_runs(model, example_inputs, ignore, forward_fn)
    return result


def _prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    amount: float | Mapping[str, float],
    importance: str,
    global_pruning: bool,
    ignore: Sequence[str],
    round_to: int | None,
    forward_fn: ForwardFn | None,
) -> PruneResult:
    """``prune_structured`` without the final check that the pruned model still runs."""
    import torch_pruning as tp

    check_choice("importance", importance, IMPORTANCES)
    check_type("global_pruning", global_pruning, bool)
    ratios = dict(amount) if isinstance(amount, Mapping) else None
    if ratios is None:
        check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    else:
        for k, v in ratios.items():
            check_range(f"amount[{k!r}]", v, 0.0, 1.0, high_inclusive=False)
    result = PruneResult()
    if (ratios is None and amount == 0) or (ratios is not None and not any(ratios.values())):
        return result
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    ignored = _ignored_modules(model, example_inputs, ignore, forward_fn)
    ratio_dict = None
    if ratios is not None:
        unknown = [k for k in ratios if k not in modules]
        if unknown:
            raise ValueError(f"`amount` names layers {unknown} that are not in the model")
        ratio_dict = {modules[k]: float(v) for k, v in ratios.items()}
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=_importance(importance),
        global_pruning=global_pruning,
        pruning_ratio=0.0 if ratio_dict is not None else float(cast(float, amount)),  # a number when no dict
        pruning_ratio_dict=ratio_dict,
        max_pruning_ratio=0.95,
        ignored_layers=ignored,
        round_to=round_to,
        num_heads=num_heads,
        forward_fn=forward_fn or _forward_fn,
        root_module_types=[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear],
    )
    dg = pruner.DG
    with eval_mode(model):
        with torch.no_grad():  # importance of every channel, before anything changes (for explanations)
            for group in dg.get_all_groups(
                ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
            ):
                imp = pruner.estimate_importance(group)
                if imp is not None:
                    result.scores[names[group[0].dep.target.module]] = [float(v) for v in imp.cpu().reshape(-1)]
        for group in pruner.step(interactive=True):
            idxs = [int(getattr(i, "idx", i)) for i in group[0].idxs]
            result.removed.setdefault(names[group[0].dep.target.module], []).extend(idxs)
            group.prune()  # recorded in the dependency graph's pruning history
    result.steps = [
        PruneStep(layer, "out" if out else "in", sorted(int(getattr(i, "idx", i)) for i in idxs))
        for layer, out, idxs in pruner.pruning_history()
    ]
    return result


def breaking_groups(
    model: nn.Module,
    example_inputs: ExampleInputs,
    amount: float | Mapping[str, float],
    ignore: Sequence[str] = (),
    forward_fn: ForwardFn | None = None,
    global_pruning: bool = False,
    round_to: int | None = None,
    copy_fn: Callable[[nn.Module], nn.Module] | None = None,
) -> list[str]:
    """The roots of the pruning groups that, pruned alone, stop ``model`` from running (found on copies made by
    ``copy_fn``, default ``copy.deepcopy``: ``model`` is not changed).

    Torch-Pruning follows parameters; a module that keeps a tensor or a size of a group's width elsewhere (a
    positional-encoding buffer added to the embedding, a hard-coded ``view``) no longer runs once that group is
    pruned. Each group of the plan for ``amount`` is replayed alone on a fresh copy and run once; the roots of
    those that fail are returned. Naming one of them in ``ignore`` keeps its whole group (Torch-Pruning skips a
    group in which an ignored layer would lose output channels). Cost: one pruning of a copy, then one replay and
    one forward per group: meant for after ``prune_structured`` failed.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.compress import breaking_groups
        >>> class Scaled(nn.Module):  # a buffer of the hidden width, outside Torch-Pruning's view
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        ...         self.register_buffer("scale", torch.ones(8))
        ...     def forward(self, x):
        ...         return self.out(self.b(self.a(x).relu()) * self.scale)
        >>> breaking_groups(Scaled(), torch.rand(2, 4), 0.5)  # a's group runs pruned; b's output meets the buffer
        ['b']
    """
    import copy

    clone = copy_fn or copy.deepcopy
    steps = _prune(clone(model), example_inputs, amount, "l1", global_pruning, ignore, round_to, forward_fn)
    bad = []
    for step in steps.steps:
        fresh = clone(model)
        try:
            replay_pruning(fresh, [step], example_inputs, forward_fn)
            _run(fresh, example_inputs, forward_fn)
        except Exception:  # any failure of the replayed copy: this group cannot be pruned in this model
            bad.append(_out_root(clone(model), step, example_inputs, forward_fn))
    return list(dict.fromkeys(bad))


def _out_root(model: nn.Module, step: PruneStep, example_inputs: ExampleInputs, forward_fn: ForwardFn | None) -> str:
    """A layer of ``step``'s group that loses output channels (what ``ignore`` needs to keep the group whole; the
    history may name the group by a layer that loses input channels)."""
    dg = _graph(model, example_inputs, forward_fn)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    module = modules[step.layer]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if step.direction == "out" else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, list(step.idxs))
    outs = [
        names[dep.target.module]
        for dep, _ in group
        if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, ROOT_TYPES)
    ]
    return outs[0] if outs else step.layer


def _check_runs(
    model: nn.Module, example_inputs: ExampleInputs, ignore: Sequence[str], forward_fn: ForwardFn | None = None
) -> None:
    try:
        _run(model, example_inputs, forward_fn)
    except Exception as exc:
        raise RuntimeError(
            f"the pruned model no longer runs ({type(exc).__name__}: {exc}). A module probably keeps a "
            f"tensor or size outside its parameters (e.g. a cached positional encoding); add the layers that "
            f"feed it to `ignore` (currently {list(ignore)})"
        ) from exc


def replay_pruning(
    model: nn.Module,
    steps: Sequence[PruneStep | Mapping[str, Any]],
    example_inputs: ExampleInputs,
    forward_fn: ForwardFn | None = None,
) -> None:
    """Apply recorded ``steps`` to a fresh, unpruned ``model`` so it has the pruned architecture (in place).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prune_structured, replay_pruning
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(2, 1, 8, 8)
        >>> pruned = DigitsCNN(width=8)
        >>> steps = prune_structured(pruned, x, amount=0.5).steps
        >>> fresh = DigitsCNN(width=8)
        >>> replay_pruning(fresh, [s.to_dict() for s in steps], x)  # e.g. before loading a pruned state dict
        >>> fresh.features[0].out_channels
        4
        >>> _ = fresh.load_state_dict(pruned.state_dict())
    """
    if not steps:
        return
    records = [s if isinstance(s, PruneStep) else PruneStep(**s) for s in steps]
    modules = dict(model.named_modules())
    for s in records:
        if s.layer not in modules:
            raise KeyError(f"replay_pruning: layer {s.layer!r} of the record is not in this model")
    dg = _graph(model, example_inputs, forward_fn)
    dg.load_pruning_history([[s.layer, s.direction == "out", list(s.idxs)] for s in records])


def densify_state_dict(
    unpruned: nn.Module,
    steps: Sequence[PruneStep | Mapping[str, Any]],
    example_inputs: ExampleInputs,
    pruned_state: Mapping[str, torch.Tensor],
    forward_fn: ForwardFn | None = None,
) -> dict[str, Any]:
    """A state dict with ``unpruned``'s shapes that computes what the pruned model computes.

    Each kept entry goes back to its original index and removed channels are zero, so their contribution
    downstream is zero (every consumer's matching input slice is zero too). Which original indices survived
    is found by filling a copy of ``unpruned`` with its own index along each dimension and replaying
    ``steps`` on it. Used to hand a pruned model to a process holding the unpruned one (``ddp_spawn``).
    """
    import copy

    ref = unpruned.state_dict()
    floats = [t for t in ref.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    kept: dict[str, list[torch.Tensor]] = {}
    for d in range(max((t.ndim for t in floats), default=0)):
        probe = copy.deepcopy(unpruned)
        with torch.no_grad():
            for t in probe.state_dict(keep_vars=True).values():
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim > d:
                    shape = [1] * t.ndim
                    shape[d] = -1
                    t.copy_(torch.arange(t.shape[d], dtype=torch.float64).view(shape).expand_as(t))
        replay_pruning(probe, steps, example_inputs, forward_fn)
        for k, t in probe.state_dict().items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim > d:
                line = t
                for other in reversed(range(t.ndim)):
                    if other != d:
                        line = line.select(other, 0)
                kept.setdefault(k, []).append(line.double().round().long())
    out: dict[str, Any] = {}
    for k, t in pruned_state.items():
        r = ref.get(k)
        if not isinstance(t, torch.Tensor) or r is None or r.shape == t.shape or k not in kept:
            out[k] = t
            continue
        dense = torch.zeros_like(r, device=t.device)
        dense[torch.meshgrid(*[i.to(t.device) for i in kept[k]], indexing="ij")] = t.to(dense.dtype)
        out[k] = dense
    return out


def channel_counts(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """Current output channels (``out_channels``/``out_features``/``embed_dim``) of each named layer."""
    modules = dict(model.named_modules())
    out = {}
    for n in layers:
        m = modules.get(n)
        for attr in ("out_channels", "out_features", "embed_dim"):
            if m is not None and hasattr(m, attr):
                out[n] = int(getattr(m, attr))
                break
    return out


# ---------------------------------------------------------------------------------------- unstructured
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def step_ratios(
    original: Mapping[str, int], current: Mapping[str, int], amount: float, frac: float, global_pruning: bool = False
) -> float | dict[str, float] | None:
    r"""The fraction of the *current* channels to remove now so that ``frac`` of the final ``amount`` is reached.

    A layer with ``c_0`` channels at the start and ``c`` now keeps ``c_0 (1 - a f)`` after this step
    (``a`` the final amount, ``f`` the schedule's progress), so it removes ``r = 1 - c_0 (1 - a f) / c``
    of what it has; an integer ``amount >= 1`` is a channel count (``a = amount / c_0``). Per layer: a
    ``{layer: r}`` dict of the layers that lose at least half a channel (``r`` capped at 0.95); global: one
    ``r`` over all channels. ``None`` when nothing is due.

    Examples:
        >>> from lightning_nas.compress.prune import step_ratios
        >>> step_ratios({"conv": 16}, {"conv": 16}, 0.5, 0.5)
        {'conv': 0.25}
        >>> step_ratios({"conv": 16}, {"conv": 12}, 0.5, 1.0)
        {'conv': 0.33333333333333337}
    """
    if global_pruning:
        tot0, tot = sum(original.values()), sum(current.values())
        keep = tot0 * (1 - amount * frac)
        r = 1 - keep / tot if tot else 0.0
        return r if r > 1e-6 else None
    ratios = {}
    for n, c0 in original.items():
        a = amount / c0 if isinstance(amount, int) and amount >= 1 else amount
        keep = c0 * (1 - a * frac)
        r = 1 - keep / current[n] if current.get(n) else 0.0
        if r * current.get(n, 0) >= 0.5:
            ratios[n] = min(r, 0.95)
    return ratios or None


def magnitude_targets(model: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv whose ``weight`` unstructured pruning may mask."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED) and not name_matches(n, ignore)]


def magnitude_prune(
    model: nn.Module, amount: float, global_pruning: bool = True, ignore: Sequence[str] = ()
) -> dict[str, float]:
    """Mask the smallest-|w| weights with ``torch.nn.utils.prune`` so that ``amount`` of them are zero.

    ``amount`` is the *total* target sparsity in ``[0, 1)`` (already-masked weights count), globally across
    layers (``global_pruning``) or in each layer. Returns ``{layer: sparsity}`` after the step. The original
    parameter is kept as ``weight_orig`` (same object, so optimizers keep working); call ``make_permanent``.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import magnitude_prune, make_permanent
        >>> from lightning_nas.models import DigitsCNN
        >>> net = DigitsCNN(width=8)
        >>> sparsity = magnitude_prune(net, amount=0.5)  # one global |w| threshold
        >>> sorted(sparsity)
        ['classifier', 'features.0', 'features.3']
        >>> weights = [net.features[0].weight, net.features[3].weight, net.classifier.weight]
        >>> round(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights), 2)
        0.5
        >>> hasattr(net.features[3], "weight_mask")
        True
    """
    check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    targets = magnitude_targets(model, ignore)
    if not targets:
        raise ValueError(f"no Linear/Conv layer to prune after `ignore`={list(ignore)}")
    if global_pruning:
        total = sum(_weight(m).numel() for _, m in targets)
        zero = sum(int((_mask(m) == 0).sum()) for _, m in targets)
        extra = int(round(amount * total)) - zero
        if extra > 0:
            _tprune.global_unstructured([(m, "weight") for _, m in targets], _tprune.L1Unstructured, amount=extra)
    else:
        for _, m in targets:
            extra = int(round(amount * _weight(m).numel())) - int((_mask(m) == 0).sum())
            if extra > 0:
                _tprune.l1_unstructured(m, "weight", amount=extra)
    _refresh_masked_children(model)
    return sparsity(model, ignore)


def _refresh_masked_children(model: nn.Module) -> None:
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj``, so torch's pruning
    pre-hook never recomputes ``weight = weight_orig * weight_mask`` (the second backward then fails): recompute it
    in a pre-hook of the attention module itself (hand-written: torch.nn.utils.prune has no such case)."""

    def refresh(mha: nn.Module, _args: Any) -> None:
        child = cast(nn.Module, mha.out_proj)
        for hook in child._forward_pre_hooks.values():
            if isinstance(hook, _tprune.BasePruningMethod):
                hook(child, None)

    for m in model.modules():
        if (
            isinstance(m, nn.MultiheadAttention)
            and _tprune.is_pruned(m.out_proj)
            and not getattr(m, "_lnas_prune_refresh", False)
        ):
            m.register_forward_pre_hook(refresh)
            setattr(m, "_lnas_prune_refresh", True)  # noqa: B010 (mypy types a Module's attributes Tensor | Module)


def _weight(m: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, m.weight)  # a Linear's or Conv's (Module.__getattr__ is typed Tensor | Module)


def _mask(m: nn.Module) -> torch.Tensor:
    return getattr(m, "weight_mask", torch.ones_like(_weight(m)))


def sparsity(model: nn.Module, ignore: Sequence[str] = ()) -> dict[str, float]:
    """Fraction of exactly-zero weights of each Linear/Conv layer."""
    return {n: float((_weight(m) == 0).float().mean()) for n, m in magnitude_targets(model, ignore)}


def make_permanent(model: nn.Module) -> None:
    """Fold masks into the weights (``prune.remove``): plain parameters with zeros, no ``weight_mask`` left.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas.compress import magnitude_prune, make_permanent
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = magnitude_prune(net, amount=0.5)
        >>> make_permanent(net)
        >>> hasattr(net[0], "weight_mask"), isinstance(net[0].weight, nn.Parameter)
        (False, True)
    """
    for m in model.modules():
        if _tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            _tprune.remove(m, "weight")


def add_masks_for_state_dict(model: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> int:
    """Re-create the ``weight_orig``/``weight_mask`` re-parametrisation where ``state_dict`` has masks.

    Lets a masked checkpoint load into a fresh, unmasked model. Returns the number of layers prepared.
    """
    n = 0
    for name, m in model.named_modules():
        key = f"{prefix}{name}.weight_mask" if name else f"{prefix}weight_mask"
        if key in state_dict and not hasattr(m, "weight_mask"):
            _tprune.identity(m, "weight")
            n += 1
    _refresh_masked_children(model)
    return n
