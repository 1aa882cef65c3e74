"""Low-rank factorization by truncated SVD (pure torch, no Lightning).

Hand-written: no maintained library ships SVD factorization of Linear/Conv1d/Conv2d layers as a reusable
transform with a MAC check (torch offers the SVD itself, ``torch.linalg.svd``).

``Linear`` ``W (out x in)``: ``W = U S V^T ~ (U_r S_r^{1/2}) (S_r^{1/2} V_r^T)`` -> ``Linear(in, r, bias=False)``
then ``Linear(r, out)``. Cost per sample ``r (in + out)`` instead of ``in * out``.

``Conv2d`` ``W (out x in x k x k)`` reshaped to ``out x (in k k)``: the first factor is a ``k x k`` conv from
``in`` to ``r`` channels (same stride/padding/dilation), the second a ``1 x 1`` conv from ``r`` to ``out``.
Cost per output pixel ``r (in k^2 + out)`` instead of ``out in k^2``. ``Conv1d`` (e.g. a text CNN over word
embeddings) likewise: a width-``k`` conv to ``r`` channels, then a width-1 conv.

Rank choice: the smallest ``r`` keeping ``energy`` of the spectrum, ``sum_{i<r} s_i^2 / sum_i s_i^2 >= energy``,
or the largest ``r`` whose factors cost at most ``budget`` x the original parameters. A layer whose chosen
rank would not reduce MACs is left alone and reported as skipped (never an error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from lightning_nas._modules import name_matches
from lightning_nas._validate import check_range


@dataclass
class LayerFactorization:
    """What happened to one layer: ``rank`` is ``None`` when skipped (``reason`` says why)."""

    layer: str
    kind: str
    full_rank: int
    rank: int | None
    energy_kept: float
    params_before: int
    params_after: int
    macs_ratio: float | None  # factored / original cost per sample (or output pixel)
    reason: str = ""
    singular_values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_energy_budget(energy: float | None, budget: float | None) -> tuple[float | None, float | None]:
    """Validate the rank rule: a ``budget`` in (0, 1) wins (energy dropped), else ``energy`` in (0, 1]."""
    if budget is not None:
        check_range("budget", budget, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        return None, budget
    if energy is None:
        raise ValueError("give `energy` in (0, 1] or `budget` in (0, 1), got both None")
    check_range("energy", energy, 0.0, 1.0, low_inclusive=False)
    return energy, None


def _weight(m: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, m.weight)  # a Linear's or Conv2d's (Module.__getattr__ is typed Tensor | Module)


def _matrix(m: nn.Module) -> torch.Tensor:
    w = _weight(m).detach()
    return w.reshape(w.shape[0], -1).float()


def _cost_full(m: nn.Module) -> int:
    w = _weight(m)
    return int(w.numel())  # MACs per output position for Linear and Conv1d/Conv2d (groups == 1)


def _cost_rank(m: nn.Module, r: int) -> int:
    mat = _weight(m).reshape(_weight(m).shape[0], -1)
    return r * (mat.shape[1] + mat.shape[0])


def choose_rank(
    s: torch.Tensor,
    energy: float | None = None,
    budget: float | None = None,
    per_rank_cost: int = 1,
    full_cost: int = 1,
) -> int:
    """Rank from singular values ``s`` (descending) by retained ``energy`` or parameter ``budget``."""
    if (energy is None) == (budget is None):
        raise ValueError("give exactly one of `energy` or `budget`")
    if energy is not None:
        check_range("energy", energy, 0.0, 1.0, low_inclusive=False)
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-30)
        return int(min(int((e < energy - 1e-12).sum()) + 1, len(s)))
    check_range("budget", budget, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    assert budget is not None  # exactly one of the two is given
    return max(1, min(len(s), int(math.floor(budget * full_cost / per_rank_cost))))


def _is_candidate(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1 and isinstance(m.padding, (tuple, int)):
        return "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"
    return None


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers ``factorize`` may replace: Linear and groups=1 Conv1d/Conv2d, except those an attention module
    reads directly (``nn.MultiheadAttention.out_proj`` is used through its ``.weight``)."""
    inside = {
        f"{n}.{c}" if n else c
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_modules()
        if c
    }
    return [(n, m) for n, m in model.named_modules() if n and n not in inside and _is_candidate(m)]


def merge_factors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dense weight of a factor pair: ``W_r = B A`` with ``a`` the first factor's weight
    (``r x`` the layer's input dims, e.g. ``(r, in, k, k)``) and ``b`` the second's (``(out, r, 1, 1)``
    or ``(out, r)``); the result has the original layer's shape ``(out, *a.shape[1:])``.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress.lowrank import merge_factors
        >>> merge_factors(torch.ones(2, 3), torch.ones(4, 2)).shape
        torch.Size([4, 3])
    """
    w = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
    return w.reshape(b.shape[0], *a.shape[1:])


def factor_layer(m: nn.Module, rank: int) -> nn.Sequential:
    """Two-layer truncated-SVD replacement of a ``Linear``, ``Conv1d`` or ``Conv2d`` (``groups=1``) at ``rank``."""
    mat = _matrix(m)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = int(rank)
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).to(_weight(m).dtype)  # r x (in k k)
    b = (u[:, :r] * root[None, :]).to(_weight(m).dtype)  # out x r
    dev = _weight(m).device
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    if isinstance(m, nn.Linear):
        first = nn.Linear(m.in_features, r, bias=False, device=dev, dtype=m.weight.dtype)
        second = nn.Linear(r, m.out_features, bias=m.bias is not None, device=dev, dtype=m.weight.dtype)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    else:
        geom: Any = m  # torch types kernel_size/stride/padding/dilation tuple[int, ...], the convs' arguments ints
        conv: Any = type(m)  # Conv1d or Conv2d (groups == 1), rebuilt with the same geometry
        first = conv(
            m.in_channels,
            r,
            geom.kernel_size,
            geom.stride,
            geom.padding,
            geom.dilation,
            bias=False,
            padding_mode=m.padding_mode,
            device=dev,
            dtype=m.weight.dtype,
        )
        second = conv(r, m.out_channels, 1, bias=m.bias is not None, device=dev, dtype=m.weight.dtype)
        first.weight.data.copy_(a.reshape(r, m.in_channels, *geom.kernel_size))
        second.weight.data.copy_(b.reshape(m.out_channels, r, *(1,) * len(geom.kernel_size)))
    bias: Any = m.bias
    if bias is not None:
        assert second.bias is not None  # made with bias=True
        second.bias.data.copy_(bias.detach())
    return nn.Sequential(first, second)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def factorize(
    model: nn.Module,
    energy: float | None = 0.9,
    budget: float | None = None,
    layers: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    ranks: Mapping[str, int] | None = None,
    min_saving: float = 0.1,
) -> list[LayerFactorization]:
    """Replace ``Linear``/``Conv1d``/``Conv2d`` layers of ``model`` (in place) by truncated-SVD pairs where that
    is cheaper.

    Args:
        model: any module.
        energy: fraction of spectral energy to keep, in ``(0, 1]`` (ignored when ``budget`` or ``ranks`` given).
        budget: instead, the fraction in ``(0, 1)`` of each layer's parameters the two factors may use.
        layers: names to consider (default: every Linear and groups=1 Conv1d/Conv2d).
        ignore: names (prefix or glob) to leave alone.
        ranks: explicit ``{layer: rank}`` (used to replay a factorization on a fresh model).
        min_saving: factorize only where the factors cost at most ``(1 - min_saving)`` of the layer's MACs.

    Math: a layer's weight, as a matrix ``W`` (``out x in``; a conv's ``out x (in k k)``), has singular values
    ``s_1 >= s_2 >= ...``. With ``energy``, the rank is the smallest ``r`` with
    ``sum_{i<=r} s_i^2 / sum_i s_i^2 >= energy``; with ``budget``, the largest ``r`` whose factors have at most
    ``budget`` x the parameters. ``W ~ (U_r S_r^{1/2}) (S_r^{1/2} V_r^T)``: a Linear becomes ``in -> r -> out``
    (cost ``r (in + out)`` instead of ``in out`` per sample), a conv a ``k x k`` conv to ``r`` channels then a
    ``1 x 1`` conv (``r (in k^2 + out)`` instead of ``out in k^2`` per output pixel).

    Returns:
        one ``LayerFactorization`` per considered layer, factorized or skipped with the reason.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.compress import factorize
        >>> _ = torch.manual_seed(0)
        >>> u, v = torch.randn(256, 4), torch.randn(4, 128)
        >>> net = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(u @ v + 0.01 * torch.randn(256, 128))  # nearly rank 4
        >>> report = factorize(net, energy=0.99)
        >>> [(r.layer, r.full_rank, r.rank) for r in report]  # doctest: +ELLIPSIS
        [('0', 128, 4), ('2', 10, None)]
        >>> net[0]  # the 128 -> 256 layer is now 128 -> 4 -> 256
        Sequential(
          (0): Linear(in_features=128, out_features=4, bias=False)
          (1): Linear(in_features=4, out_features=256, bias=True)
        )
        >>> report[1].reason  # doctest: +ELLIPSIS
        '...'
    """
    check_range("min_saving", min_saving, 0.0, 1.0, high_inclusive=False)
    if ranks is None:
        energy, budget = check_energy_budget(energy, budget)
    report = []
    cands = candidates(model)
    if ranks is not None:
        cands = [(n, m) for n, m in cands if n in ranks]
    elif layers is not None:
        missing = [n for n in layers if n not in dict(cands)]
        if missing:
            raise ValueError(f"`layers` {missing} are not Linear/Conv1d/Conv2d(groups=1) layers of the model")
        cands = [(n, m) for n, m in cands if n in layers]
    cands = [(n, m) for n, m in cands if not name_matches(n, ignore)]
    for name, m in cands:
        kind = _is_candidate(m)
        assert kind is not None  # candidates() lists only these
        with torch.no_grad():
            s = torch.linalg.svdvals(_matrix(m))
        full, per_rank = _cost_full(m), _cost_rank(m, 1)
        if ranks is not None:
            r = int(ranks[name])
        else:
            r = choose_rank(s, energy, budget, per_rank, full)
        e = float((s[:r] ** 2).sum() / (s**2).sum().clamp_min(1e-30))
        bias = 0 if m.bias is None else cast(torch.Tensor, m.bias).numel()
        rec = LayerFactorization(
            name,
            kind,
            len(s),
            r,
            e,
            full + bias,
            r * per_rank + bias,
            r * per_rank / full,
            singular_values=[float(v) for v in s],
        )
        if ranks is None and r * per_rank > (1.0 - min_saving) * full:
            rec.rank, rec.params_after, rec.macs_ratio = None, rec.params_before, None
            rec.reason = (
                f"rank {r} of {len(s)} (energy {e:.3f}) would cost {r * per_rank} vs {full} MACs per "
                f"position, saving less than min_saving={min_saving}: not factorized"
            )
        else:
            _set(model, name, factor_layer(m, r))
        report.append(rec)
    return report
