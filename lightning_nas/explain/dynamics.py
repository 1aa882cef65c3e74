"""Training dynamics of a model: per-layer weight and gradient norms, update-to-weight ratio, dead units.

Pure torch, no Lightning import. A "layer" is a module holding its own ``weight`` parameter with two or
more dimensions (conv, linear, embedding); "activations" are ``nn.ReLU``/``ReLU6``/``LeakyReLU``/``ELU``
modules, whose outputs are watched for units that never fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "tracked_layers",
    "weight_norms",
    "grad_norms",
    "snapshot",
    "update_ratios",
    "DeadUnitProbe",
    "activation_modules",
]

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU)


def tracked_layers(model: nn.Module, names: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module with its own >=2-D ``weight`` parameter (or only those in ``names``).

    Examples:
        >>> from lightning_nas.explain.dynamics import tracked_layers
        >>> from lightning_nas.models import DigitsCNN
        >>> [name for name, _ in tracked_layers(DigitsCNN(width=4))]  # weights with >= 2 dims: no BatchNorm
        ['features.0', 'features.3', 'classifier']
    """
    wanted = set(names) if names is not None else None
    out = []
    for name, mod in model.named_modules():
        w = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
        if w is None:
            w = mod._parameters.get("weight_orig")  # torch.nn.utils.prune re-parametrization
        if w is not None and w.ndim >= 2 and (wanted is None or name in wanted):
            out.append((name or type(mod).__name__, mod))
    if wanted is not None:
        missing = wanted - {n for n, _ in out}
        if missing:
            raise ValueError(
                f"`layers` {sorted(missing)} are not weight layers of {type(model).__name__}; "
                f"allowed: {[n for n, _ in tracked_layers(model)]}"
            )
    return out


def layer_weight(mod: nn.Module) -> torch.Tensor:
    w = mod._parameters.get("weight")
    w = w if w is not None else mod._parameters["weight_orig"]
    assert w is not None  # a registered parameter set to None is not a weight layer (tracked_layers skips it)
    return w


def _read(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalars computed on the device, read back to the host in one transfer (one sync, not one per layer)."""
    if not values:
        return {}
    first = next(iter(values.values())).device
    return dict(zip(values, torch.stack([v.reshape(()).float().to(first) for v in values.values()]).tolist()))


def weight_norms(layers: list[tuple[str, nn.Module]]) -> dict[str, float]:
    """``||W||_2`` (Frobenius) per layer.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.dynamics import tracked_layers, weight_norms
        >>> layer = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)
        >>> weight_norms(tracked_layers(nn.Sequential(layer)))  # sqrt(4 * 1^2)
        {'0': 2.0}
    """
    with torch.no_grad():
        return _read({n: layer_weight(m).detach().float().norm() for n, m in layers})


def grad_norms(layers: list[tuple[str, nn.Module]]) -> dict[str, float]:
    """``||dL/dW||_2`` per layer that has a gradient now.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.dynamics import grad_norms, tracked_layers
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
        >>> layers = tracked_layers(net)
        >>> grad_norms(layers)  # no backward yet
        {}
        >>> net(torch.ones(1, 2)).sum().backward()
        >>> grad_norms(layers)  # dL/dW = 1 for each of the 4 weights
        {'0': 2.0}
    """
    with torch.no_grad():
        return _read({n: g.detach().float().norm() for n, m in layers if (g := layer_weight(m).grad) is not None})


def snapshot(layers: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """Copies of the weights, to measure the next update against.

    Examples:
        >>> from torch import nn
        >>> from lightning_nas.explain.dynamics import snapshot, tracked_layers
        >>> layers = tracked_layers(nn.Sequential(nn.Linear(2, 3)))
        >>> {name: tuple(w.shape) for name, w in snapshot(layers).items()}
        {'0': (3, 2)}
    """
    with torch.no_grad():
        return {n: layer_weight(m).detach().clone() for n, m in layers}


def update_ratios(layers: list[tuple[str, nn.Module]], before: dict[str, torch.Tensor]) -> dict[str, float]:
    """``||W_{t+1} - W_t||_2 / ||W_t||_2`` per layer (healthy SGD training sits near 1e-3).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.dynamics import snapshot, tracked_layers, update_ratios
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
        >>> layers = tracked_layers(net)
        >>> before = snapshot(layers)
        >>> with torch.no_grad():
        ...     _ = net[0].weight.mul_(1.01)  # a step that moves every weight by 1%
        >>> {k: round(v, 4) for k, v in update_ratios(layers, before).items()}
        {'0': 0.01}
    """
    ratios = {}
    with torch.no_grad():
        for n, m in layers:
            w0 = before.get(n)
            w1 = layer_weight(m)
            if w0 is None or w0.shape != w1.shape:
                continue
            denom = w0.float().norm()
            step = (w1.detach().float() - w0.float()).norm()
            ratios[n] = torch.where(denom > 0, step / denom, torch.full_like(denom, float("nan")))
    return _read(ratios)


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ReLU-type activation (``ReLU``, ``ReLU6``, ``LeakyReLU``, ``ELU``), for
    ``DeadUnitProbe``.

    Examples:
        >>> from lightning_nas.explain.dynamics import activation_modules
        >>> from lightning_nas.models import DigitsCNN
        >>> [name for name, _ in activation_modules(DigitsCNN(width=4))]
        ['features.2', 'features.5']
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


class DeadUnitProbe:
    """Context manager: forward hooks on the activations that record which units never fire in a batch.

    For an output of shape ``(B, C, ...)``: ``dead_fraction`` is the fraction of units (every ``C, ...``
    position) that are ``<= 0`` for every sample; ``dead_channel_fraction`` the fraction of channels ``C``
    that are ``<= 0`` everywhere. Over several forward calls a unit must stay silent in all of them.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.dynamics import DeadUnitProbe, activation_modules
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].bias.copy_(torch.tensor([-100.0, -100.0, 100.0, 100.0]))  # two units can never fire
        >>> with DeadUnitProbe(activation_modules(net)) as probe:
        ...     _ = net(torch.rand(8, 2))
        >>> probe.result()
        {'1': {'dead_fraction': 0.5, 'dead_channel_fraction': 0.5}}
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.modules = modules
        self._alive: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.ndim < 2:
                return
            fired = (out.detach() > 0).any(0)
            prev = self._alive.get(name)
            self._alive[name] = fired if prev is None or prev.shape != fired.shape else (prev | fired)

        return fn

    def __enter__(self) -> DeadUnitProbe:
        self._alive.clear()
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def result(self) -> dict[str, dict[str, float]]:
        alive: dict[str, torch.Tensor] = {}
        for n, a in self._alive.items():
            channels = a.reshape(a.shape[0], -1).any(1) if a.ndim > 1 else a
            alive[f"{n}\0dead_fraction"] = a.float().mean()
            alive[f"{n}\0dead_channel_fraction"] = channels.float().mean()
        out: dict[str, dict[str, float]] = {}
        for key, v in _read(alive).items():  # one read back for every layer
            n, what = key.split("\0")
            out.setdefault(n, {})[what] = 1.0 - v
        return out
