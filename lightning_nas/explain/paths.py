"""Decision paths: which channels/units carry each class through the network, and which of them matter.

Pure torch, no Lightning import. For a probe set ``(x, classes)``:

* the **path** of class ``c`` is, per layer, the ``top_k`` channels with the highest mean activation
  over the class's samples (conv outputs are averaged over space first); with ``relative=True`` (default)
  each channel's activation is first standardized over the whole probe, so a channel that is large for
  every class does not sit on every path;
* the **overlap** of two classes is the Jaccard index ``|P_a & P_b| / |P_a | P_b|`` of their paths
  taken as sets of ``(layer, channel)``;
* the **ablation effect** of a channel for class ``c`` is the drop of the mean class-``c`` logit over the
  class's samples when that channel's output is set to zero (each candidate on its own, and the class's
  whole top-k at once per layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas.explain._attribution_utils import forward_of
from lightning_nas.explain.dynamics import ACTIVATIONS

__all__ = ["PathReport", "default_layers", "decision_paths"]


@dataclass
class PathReport:
    """What ``decision_paths`` found, with each part ready as a table (``columns``, ``rows``)."""

    layers: list[str]
    classes: list[int]
    top_channels: dict[str, dict[int, list[int]]]  # layer -> class -> channels
    overlap: dict[tuple[int, int], float]
    ablation: list[tuple[int, str, int, float]]  # (class, layer, channel, logit drop), best first per class
    group_ablation: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def mean_overlap(self) -> float:
        vals = [v for (a, b), v in self.overlap.items() if a < b]
        return sum(vals) / len(vals) if vals else float("nan")

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        top = [
            [c, layer, " ".join(map(str, chans)), self.group_ablation.get((c, layer))]
            for layer in self.layers
            for c, chans in self.top_channels[layer].items()
        ]
        ov = [[a, b, round(v, 4)] for (a, b), v in sorted(self.overlap.items()) if a < b]
        abl = [[c, layer, ch, round(d, 5)] for c, layer, ch, d in self.ablation]
        return {
            "top_channels": (["class", "layer", "channels", "top_k_ablation_logit_drop"], top),
            "overlap": (["class_a", "class_b", "jaccard"], ov),
            "ablation": (["class", "layer", "channel", "logit_drop"], abl),
        }


def default_layers(model: nn.Module) -> list[str]:
    """The activation modules (ReLU & co., whose outputs are what fires); without any, every conv and linear
    layer except a final linear (the logits have no 'channels' to follow).

    Examples:
        >>> from lightning_nas.explain.paths import default_layers
        >>> from lightning_nas.models import DigitsCNN
        >>> default_layers(DigitsCNN(width=4))
        ['features.2', 'features.5']
    """
    acts = [n for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    if acts:
        return acts
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    if names and isinstance(dict(model.named_modules())[names[-1]], nn.Linear):
        names = names[:-1]
    return names


def _channel_means(out: torch.Tensor) -> torch.Tensor:
    out = out.detach().float()
    if out.ndim > 2:
        return out.flatten(2).mean(2)  # (B, C, ...) -> (B, C)
    return out


def _zero_channels(chans: list[int], call: int | None) -> Callable:
    """A forward hook zeroing ``chans`` of the module's output (only on its ``call``-th call in a forward, when the
    module runs several times: one ``nn.ReLU`` reused after layers of different widths)."""
    idx = torch.tensor(chans, dtype=torch.long)
    seen = [0]

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
        k, seen[0] = seen[0], seen[0] + 1
        if call is not None and k != call:
            return None
        out = out.clone()
        out[:, idx.to(out.device)] = 0
        return out

    return hook


def decision_paths(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    *,
    layers: list[str] | None = None,
    top_k: int = 3,
    forward_fn: Callable[..., torch.Tensor] | None = None,
    ablate: bool = True,
    top_ablation: int = 3,
    relative: bool = True,
    max_ablations: int | None = None,
    additional_forward_args: tuple = (),
    progress: Callable[[str], None] | None = None,
) -> PathReport:
    """Activation paths per class, their overlap and channel-ablation effects on ``model`` (put in eval mode
    for the call, restored after). ``classes`` are the classes to explain, one per sample (labels or
    predictions); ``additional_forward_args`` the model's other inputs, row-aligned with ``x``.

    A module that runs several times in one forward (one ``nn.ReLU`` after layers of different widths) is followed
    per call, as ``"name#k"``. Cost: one forward plus, with ``ablate``, one per distinct candidate channel of each
    layer and one per class and layer; ``max_ablations`` caps those forwards, spending them on the layers nearest
    the output first and, in a layer, on each class's best channel first (the rest get paths and overlaps).
    ``progress(message)`` hears each layer.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.paths import decision_paths
        >>> from lightning_nas.models import DigitsCNN
        >>> x, classes = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
        >>> report = decision_paths(DigitsCNN(width=4), x, classes, top_k=2, max_ablations=4)
        >>> report.layers, len(report.top_channels["features.5"][0])  # class 0's 2 strongest channels there
        (['features.2', 'features.5'], 2)
        >>> report.overlap[(3, 3)], 0.0 <= report.mean_overlap <= 1.0  # Jaccard of the paths of two classes
        (1.0, True)
        >>> sorted(report.tables())  # each part as (columns, rows), as DecisionPaths logs them
        ['ablation', 'overlap', 'top_channels']
    """
    modules = dict(model.named_modules())
    layers = default_layers(model) if layers is None else list(layers)
    missing = [n for n in layers if n not in modules]
    if missing or not layers:
        raise ValueError(
            f"`layers` {missing or layers} are not usable modules of {type(model).__name__}; "
            f"allowed: {default_layers(model)}"
        )
    base_fwd = forward_of(model, forward_fn)
    rest = tuple(additional_forward_args)

    def fwd(inp: torch.Tensor) -> torch.Tensor:
        return base_fwd(inp, *rest)

    with eval_mode(model):
        logits, units, acts = _record_units(model, modules, layers, fwd, x)
        keys = list(units)
        cls = classes.view(-1).to(logits.device)
        present = sorted(set(cls.tolist()))
        top: dict[str, dict[int, list[int]]] = {}
        for n in keys:
            a = acts[n]
            if relative:
                a = (a - a.mean(0)) / (a.std(0) + 1e-6) if a.shape[0] > 1 else a
            k = min(top_k, a.shape[1])
            top[n] = {c: a[cls == c].mean(0).topk(k).indices.tolist() for c in present}
        paths = {c: {(n, ch) for n in keys for ch in top[n][c]} for c in present}
        overlap = {
            (a, b): len(paths[a] & paths[b]) / max(1, len(paths[a] | paths[b])) for a in present for b in present
        }
        ablation: list[tuple[int, str, int, float]] = []
        group: dict[tuple[int, str], float] = {}
        if ablate:
            ablator = _Ablator(fwd, x, logits, cls, present, max_ablations, progress)
            ablation, group = ablator.run(keys, {n: (modules[units[n][0]], units[n][1]) for n in keys}, top, top_k)
            ablation = _top_per_class(ablation, top_ablation)
        return PathReport(keys, present, top, overlap, ablation, group)


def _record_units(
    model: nn.Module, modules: dict[str, nn.Module], layers: list[str], fwd: Callable, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, tuple[str, int | None]], dict[str, torch.Tensor]]:
    """One forward recording each layer's per-channel mean activations; a module called k times in the forward
    gives units ``name#0..k-1``. Returns ``(logits, {unit: (module name, call index)}, {unit: activations})``."""
    outs: dict[str, list[torch.Tensor]] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.setdefault(n, []).append(_channel_means(o)))
        for n in layers
    ]
    try:
        with torch.no_grad():
            logits = fwd(x).float()
    finally:
        for h in handles:
            h.remove()
    units: dict[str, tuple[str, int | None]] = {}
    acts: dict[str, torch.Tensor] = {}
    for n in layers:
        calls = outs.get(n, [])
        for k, a in enumerate(calls):
            key = n if len(calls) == 1 else f"{n}#{k}"
            units[key], acts[key] = (n, None if len(calls) == 1 else k), a
    if not units:
        raise ValueError(f"none of `layers` {layers} ran in the forward of {type(model).__name__}")
    return logits, units, acts


class _Ablator:
    """Channel ablations under a budget of forwards: layers nearest the output first; in a layer each class's best
    channel first, then the next ranks, then each class's whole top-k at once."""

    def __init__(
        self,
        fwd: Callable,
        x: torch.Tensor,
        logits: torch.Tensor,
        cls: torch.Tensor,
        present: list[int],
        max_ablations: int | None,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.fwd, self.x, self.cls, self.present, self.progress = fwd, x, cls, present, progress
        self.base = {c: float(logits[cls == c, c].mean()) for c in present}
        self.budget: float = max_ablations if max_ablations is not None else float("inf")

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def run(
        self,
        keys: list[str],
        where: dict[str, tuple[nn.Module, int | None]],
        top: dict[str, dict[int, list[int]]],
        top_k: int,
    ) -> tuple[list[tuple[int, str, int, float]], dict[tuple[int, str], float]]:
        ablation: list[tuple[int, str, int, float]] = []
        group: dict[tuple[int, str], float] = {}
        for i, n in enumerate(reversed(keys)):
            if self.budget < 1:
                self._say(f"ablation budget spent: {len(keys) - i} of {len(keys)} layers not ablated")
                break
            module, call = where[n]
            order = list(dict.fromkeys(ch for r in range(top_k) for c in self.present for ch in top[n][c][r : r + 1]))
            self._say(f"ablating {n} ({i + 1}/{len(keys)})")
            effects: dict[int, torch.Tensor] = {}
            for ch in order:
                if self.budget < 1:
                    break
                effects[ch] = _run_ablated(self.fwd, module, [ch], self.x, call)
                self.budget -= 1
            for c in self.present:
                mask = self.cls == c
                ablation += [
                    (c, n, ch, self.base[c] - float(effects[ch][mask, c].mean())) for ch in top[n][c] if ch in effects
                ]
            for c in self.present:
                if self.budget < 1:
                    break
                out = _run_ablated(self.fwd, module, top[n][c], self.x, call)
                group[(c, n)] = self.base[c] - float(out[self.cls == c, c].mean())
                self.budget -= 1
        return ablation, group


def _top_per_class(ablation: list[tuple[int, str, int, float]], top_ablation: int) -> list[tuple[int, str, int, float]]:
    """The ``top_ablation`` largest drops of each class, classes in order."""
    ablation = sorted(ablation, key=lambda r: (r[0], -r[3]))
    per_class: dict[int, int] = {}
    kept = []
    for r in ablation:
        if per_class.get(r[0], 0) < top_ablation:
            kept.append(r)
            per_class[r[0]] = per_class.get(r[0], 0) + 1
    return kept


def _run_ablated(
    fwd: Callable, module: nn.Module, chans: list[int], x: torch.Tensor, call: int | None = None
) -> torch.Tensor:
    h = module.register_forward_hook(_zero_channels(chans, call))
    try:
        with torch.no_grad():
            return fwd(x).float()
    finally:
        h.remove()
