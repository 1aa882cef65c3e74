"""Helpers of ``explain.attribution``: rank agreement, structural fingerprint, heatmap overlays (images and
spectrograms), top-feature rows."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def forward_of(model: nn.Module, forward_fn: Callable[..., torch.Tensor] | None) -> Callable:
    """``(x, *rest) -> logits``: ``forward_fn(model, x, *rest)`` when given, else ``model(x, *rest)``.

    ``rest`` are the model's other inputs (``additional_forward_args``), row-aligned with ``x``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.attribution import forward_of
        >>> model = nn.Linear(3, 2)
        >>> forward_of(model, None)(torch.rand(4, 3)).shape
        torch.Size([4, 2])
        >>> forward_of(model, lambda m, x: m(x * 2))(torch.rand(4, 3)).shape  # e.g. the step's own preprocessing
        torch.Size([4, 2])
    """
    if forward_fn is None:
        return model
    return lambda x, *rest: forward_fn(model, x, *rest)


def rows_of(rest: tuple, n: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple:
    """``fn`` applied to every tensor of ``rest`` whose first dimension is the batch ``n`` (others unchanged)."""
    return tuple(fn(t) if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == n else t for t in rest)


def required_inputs(model: nn.Module) -> int:
    """How many positional arguments ``model.forward`` requires (``*args`` counts as one)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return 1
    n = 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


def fingerprint(model: nn.Module) -> str:
    """A hash of the module tree (names, types) and every parameter's and buffer's name and shape.

    It changes when pruning re-parametrizes or shrinks a layer, QAT swaps modules, a low-rank factorization
    splits a layer or a NAS space is frozen; it does not change when only weight values change.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prune_structured
        >>> from lightning_nas.explain.attribution import fingerprint
        >>> from lightning_nas.models import DigitsCNN
        >>> net = DigitsCNN(width=8)
        >>> before = fingerprint(net)
        >>> with torch.no_grad():
        ...     _ = net.classifier.weight.mul_(2)  # new values, same structure
        >>> fingerprint(net) == before
        True
        >>> _ = prune_structured(net, torch.rand(2, 1, 8, 8), amount=0.5)
        >>> fingerprint(net) == before
        False
    """
    h = hashlib.sha1()
    for name, mod in model.named_modules():
        h.update(f"m:{name}:{type(mod).__qualname__};".encode())
    for name, p in model.named_parameters():
        h.update(f"p:{name}:{tuple(p.shape)};".encode())
    for name, b in model.named_buffers():
        h.update(f"b:{name}:{tuple(b.shape)};".encode())
    return h.hexdigest()[:16]


def _ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v, axis=1)  # average ranks: ties (e.g. an all-zero background) share a rank


def rank_agreement(a: torch.Tensor, b: torch.Tensor, topk: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample Spearman correlation and top-k overlap of ``|a|`` and ``|b|`` (same shape, batch first).

    Spearman is Pearson on average ranks; a sample whose two maps are both constant scores 1, one
    constant map against a varying one scores ``nan`` (left out of means).

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.attribution import rank_agreement
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> rho, top = rank_agreement(a, a, topk=0.25)
        >>> float(rho[0]), float(top[0])
        (1.0, 1.0)
        >>> rho, top = rank_agreement(a, a.flip(-1), topk=0.25)  # the order of |a| reversed
        >>> float(rho[0]), float(top[0])
        (-1.0, 0.0)
    """
    if a.shape != b.shape:
        raise ValueError(f"attributions to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa = a.detach().abs().reshape(a.shape[0], -1).double().cpu().numpy()
    fb = b.detach().abs().reshape(b.shape[0], -1).double().cpu().numpy()
    ra, rb = _ranks(fa), _ranks(fb)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    both_const = (np.ptp(fa, axis=1) == 0) & (np.ptp(fb, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)
    rho[both_const] = 1.0
    d = fa.shape[1]
    k = max(1, int(np.ceil(topk * d)))
    ta = np.argsort(-fa, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-fb, axis=1, kind="stable")[:, :k]
    top = np.array([len(set(r1.tolist()) & set(r2.tolist())) / k for r1, r2 in zip(ta, tb)])
    return rho, top


def _to_rgb_gray(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    if img.ndim == 3:  # CxHxW
        img = img.mean(0) if img.shape[0] != 3 else np.transpose(img, (1, 2, 0))
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def overlay_grid(
    x: torch.Tensor, attributions: torch.Tensor, ncols: int = 10, scale: int = 0, alpha: float = 0.6
) -> np.ndarray:
    """One uint8 RGB image: each input in gray with its attribution map over it, side by side.

    Signed maps use a blue-white-red scale symmetric around zero (red: evidence for the target);
    non-negative maps (Grad-CAM) use 'inferno'. ``scale`` upsamples small inputs (0: to about 64 px).

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.attribution import overlay_grid
        >>> image = overlay_grid(torch.rand(4, 1, 8, 8), torch.randn(4, 1, 8, 8), ncols=2, scale=4)
        >>> image.dtype, image.shape[-1]  # an RGB uint8 image, 2 x 2 tiles of 32 px
        (dtype('uint8'), 3)
    """
    from matplotlib import colormaps

    xs = x.detach().float().cpu().numpy()
    at = attributions.detach().float().cpu().numpy()
    if at.ndim == 4:
        at = at.sum(1)
    n, h, w = at.shape[0], at.shape[-2], at.shape[-1]
    scale = scale or max(1, 64 // max(h, w))
    signed = bool((at < 0).any())
    cmap = colormaps["bwr" if signed else "inferno"]
    tiles = []
    for i in range(n):
        base = _to_rgb_gray(xs[i])
        m = at[i]
        lim = np.abs(m).max() or 1.0
        heat = cmap((m / lim + 1) / 2 if signed else m / lim)[..., :3]
        weight = alpha * (np.abs(m) / lim)[..., None]
        tile = (1 - weight) * base + weight * heat
        tile = np.kron(tile, np.ones((scale, scale, 1)))
        tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=1.0))
    ncols = max(1, min(ncols, n))
    rows = [tiles[i : i + ncols] for i in range(0, n, ncols)]
    rows[-1] = rows[-1] + [np.ones_like(tiles[0])] * (ncols - len(rows[-1]))
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    return np.clip(np.round(grid * 255), 0, 255).astype(np.uint8)


def spectrogram_overlay(
    x: torch.Tensor,
    attributions: torch.Tensor,
    labels: torch.Tensor | None = None,
    preds: torch.Tensor | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    hop_seconds: float = 0.02,
    ncols: int = 5,
    alpha: float = 0.7,
) -> np.ndarray:
    """One uint8 RGB image: each ``(1, mels, frames)`` spectrogram drawn with low frequencies at the bottom and
    time running right (seconds on the axis, ``hop_seconds`` per frame), its attribution map over it.

    The spectrogram is gray; the map is drawn in a blue-white-red scale symmetric around zero (red: evidence for the
    target; non-negative maps in 'inferno'), opaque in proportion to :math:`\\sqrt{|a| / \\max |a|}` (up to
    ``alpha``), so the time-frequency cells the decision rests on stand out. Each panel is titled with its label and
    prediction.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = x.detach().float().cpu().numpy()
    at = attributions.detach().float().cpu().numpy()
    if xs.ndim != 4 or at.shape[0] != xs.shape[0] or at.shape[-2:] != xs.shape[-2:]:
        raise ValueError(
            f"spectrogram_overlay needs (batch, channels, mels, frames) inputs and maps of the same batch and size, "
            f"got {tuple(x.shape)} and {tuple(attributions.shape)}"
        )
    spec, at = xs.mean(1), (at.sum(1) if at.ndim == 4 else at)
    n, mels, frames = spec.shape
    signed = bool((at < 0).any())
    cmap = colormaps["bwr" if signed else "inferno"]
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.3 * ncols, 2.0 * nrows), dpi=80)
    canvas = FigureCanvasAgg(fig)
    extent = (0.0, frames * hop_seconds, 0, mels)
    name = lambda c: str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c)  # noqa: E731
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(spec[i], origin="lower", aspect="auto", cmap="gray", extent=extent, interpolation="nearest")
        m = at[i]
        lim = float(np.abs(m).max()) or 1.0
        rgba = cmap((m / lim + 1) / 2 if signed else m / lim)
        rgba[..., 3] = alpha * np.sqrt(np.abs(m) / lim)  # sqrt: spiky maps (saliency) still show their spread
        ax.imshow(rgba, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
        parts = []
        if labels is not None and labels.ndim == 1:
            parts.append(f"label {name(int(labels[i]))}")
        if preds is not None:
            parts.append(f"pred {name(int(preds[i]))}")
        ax.set_title(", ".join(parts) or f"sample {i}", fontsize=8)
        ax.tick_params(labelsize=6)
        if i % ncols == 0:
            ax.set_ylabel("mel band", fontsize=7)
        if i >= n - ncols:
            ax.set_xlabel("time (s)", fontsize=7)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def top_features_rows(
    x: torch.Tensor,
    attributions: torch.Tensor,
    labels: torch.Tensor | None,
    preds: torch.Tensor,
    k: int = 5,
    feature_names: list[str] | None = None,
) -> list[list[Any]]:
    """Rows ``[sample, label, pred, rank, feature, value, attribution]`` of each sample's top-``k`` features.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.attribution import top_features_rows
        >>> x = torch.tensor([[0.5, 1.0, 2.0]])
        >>> maps = torch.tensor([[0.1, -0.7, 0.3]])
        >>> one = torch.tensor([1])
        >>> top_features_rows(x, maps, labels=one, preds=one, k=2, feature_names=["a", "b", "c"])  # by |attribution|
        [[0, 1, 1, 1, 'b', 1.0, -0.7], [0, 1, 1, 2, 'c', 2.0, 0.3]]
    """
    n = x.shape[0]
    flat_a = attributions.detach().float().reshape(n, -1).cpu()
    flat_x = x.detach().reshape(n, -1).cpu()
    rows: list[list[Any]] = []
    for i in range(n):
        idx = flat_a[i].abs().argsort(descending=True)[:k].tolist()
        for r, j in enumerate(idx):
            if feature_names is not None and j < len(feature_names):
                name = feature_names[j]
            elif not torch.is_floating_point(x):
                name = f"pos{j}:tok{int(flat_x[i, j])}"
            else:
                name = f"f{j}"
            rows.append(
                [
                    i,
                    None if labels is None or labels.ndim != 1 else int(labels[i]),
                    int(preds[i]),
                    r + 1,
                    name,
                    float(flat_x[i, j]),
                    round(float(flat_a[i, j]), 6),
                ]
            )
    return rows


# the columns of a token-attribution table (one row per token); the HTML report draws such a table as highlighted text
TOKEN_COLUMNS = ("sample", "label", "pred", "position", "token", "attribution")


def token_rows(
    x: torch.Tensor,
    attributions: torch.Tensor,
    labels: torch.Tensor | None,
    preds: torch.Tensor,
    vocabulary: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    pad_id: int | None = 0,
) -> list[list[Any]]:
    """Rows ``TOKEN_COLUMNS`` of token inputs ``x (B, T)``: every token of every sample in order with its
    attribution (``(B, T)``), skipping ``pad_id``; words from ``vocabulary`` (else ``tok<id>``), labels and
    predictions as ``class_names`` (else class indices)."""
    if x.ndim != 2 or attributions.shape != x.shape:
        raise ValueError(
            f"token rows need ids (B, T) and attributions of the same shape, got {tuple(x.shape)} and "
            f"{tuple(attributions.shape)}"
        )
    ids, att = x.detach().cpu().tolist(), attributions.detach().float().cpu().tolist()

    def word(i: int) -> str:
        return vocabulary[i] if vocabulary is not None and 0 <= i < len(vocabulary) else f"tok{i}"

    def cls(c: int) -> Any:
        return class_names[c] if class_names is not None and 0 <= c < len(class_names) else c

    rows: list[list[Any]] = []
    for s, (row, a) in enumerate(zip(ids, att)):
        label = None if labels is None or labels.ndim != 1 else cls(int(labels[s]))
        pred = cls(int(preds[s]))
        rows += [[s, label, pred, t, word(i), round(v, 6)] for t, (i, v) in enumerate(zip(row, a)) if i != pad_id]
    return rows
