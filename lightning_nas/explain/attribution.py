"""Captum attributions on a fixed probe set, their faithfulness (AOPC) and their drift between two models.

Pure torch + Captum, no Lightning import. One verb per question:

``select_probe``   a few validation samples per class, chosen once by seed so runs are comparable
``attribute``      Integrated Gradients, Saliency, GradientSHAP, Occlusion, FeatureAblation or layer Grad-CAM
``aopc``           deletion-curve faithfulness of an attribution vs a random ordering
``compare``        how far the explanation moved between two models (Spearman, top-k overlap, agreement)

Token inputs (integer ids) are attributed over the output of an ``nn.Embedding`` (Captum's layer methods)
and summed over the embedding dimension, so every method returns one score per token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_nas._validate import check_choice, check_int, check_range
from lightning_nas.explain._attribution_utils import (
    fingerprint,
    forward_of,
    overlay_grid,
    rank_agreement,
    rows_of,
    spectrogram_overlay,
    top_features_rows,
)

__all__ = [
    "METHODS",
    "Probe",
    "AttributionDrift",
    "select_probe",
    "attribute",
    "aopc",
    "compare",
    "fingerprint",
    "overlay_grid",
    "spectrogram_overlay",
    "rank_agreement",
    "top_features_rows",
    "forward_of",
]

METHODS = ("integrated_gradients", "saliency", "gradient_shap", "occlusion", "feature_ablation", "grad_cam")
_TOKEN_METHODS = ("integrated_gradients", "saliency", "gradient_shap", "feature_ablation", "occlusion")

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class Probe:
    """A fixed probe set: inputs ``x``, labels ``y`` (``None`` when the data has none) and their indices."""

    x: torch.Tensor
    y: torch.Tensor | None
    indices: list[int] = field(default_factory=list)

    @property
    def is_tokens(self) -> bool:
        return not torch.is_floating_point(self.x)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class AttributionDrift:
    """How much an explanation moved between two models on one probe (means over samples, and per sample)."""

    spearman: float
    topk: float
    agreement: float
    per_sample_spearman: list[float]
    per_sample_topk: list[float]

    def as_metrics(self, prefix: str = "explain/attribution/drift") -> dict[str, float]:
        return {f"{prefix}_spearman": self.spearman, f"{prefix}_topk": self.topk, f"{prefix}_agreement": self.agreement}


def _default_batch_fn(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    if isinstance(batch, dict):
        for kx in ("x", "input", "inputs", "image", "images", "input_ids"):
            if kx in batch:
                y = next((batch[k] for k in ("y", "label", "labels", "target") if k in batch), None)
                return batch[kx], y
    raise ValueError(
        f"cannot split a batch of type {type(batch).__name__} into (inputs, labels): pass "
        "`batch_fn=lambda batch: (x, y)`"
    )


def select_probe(
    data: Any,
    n_samples: int,
    seed: int = 0,
    batch_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    max_scan: int = 4096,
) -> Probe:
    """Pick ``n_samples`` samples from ``data``, round-robin over classes (shuffled by ``seed``).

    ``data`` is a DataLoader / iterable of batches, a Dataset, or an ``(x, y)`` pair. At most ``max_scan``
    samples are read. Without 1-D integer labels the samples are drawn uniformly.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.attribution import select_probe
        >>> x, y = torch.rand(100, 1, 8, 8), torch.arange(100) % 10
        >>> probe = select_probe((x, y), n_samples=10, seed=0)
        >>> probe.x.shape, sorted(probe.y.tolist())  # one sample of each class
        (torch.Size([10, 1, 8, 8]), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    check_int("n_samples", n_samples, 1)
    xs, ys = _collect(data, batch_fn or _default_batch_fn, max_scan)
    if not xs:
        raise ValueError("select_probe: the validation data is empty; AttributionMonitor needs validation data")
    x = torch.cat(xs)
    y = torch.cat(ys) if ys and len(ys) == len(xs) else None
    if n_samples > len(x):
        raise ValueError(f"`n_samples` must be <= the {len(x)} validation samples available, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    if y is not None and y.ndim == 1 and not torch.is_floating_point(y):
        groups = [
            idx[torch.randperm(len(idx), generator=gen)].tolist()
            for c in torch.unique(y).tolist()
            for idx in [torch.nonzero(y == c).flatten()]
        ]
        picked: list[int] = []
        depth = 0
        while len(picked) < n_samples:
            picked += [g[depth] for g in groups if depth < len(g)][: n_samples - len(picked)]
            depth += 1
    else:
        picked = torch.randperm(len(x), generator=gen)[:n_samples].tolist()
    picked.sort(key=lambda i: (int(y[i]) if y is not None and y.ndim == 1 else 0, i))
    return Probe(x[picked].clone(), None if y is None else y[picked].clone(), picked)


def _collect(data: Any, batch_fn: Callable, max_scan: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [data[0][:max_scan]], [data[1][:max_scan]]
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(min(len(data), max_scan))]
        data = [torch.utils.data.default_collate(items)] if items else []
    xs, ys, seen = [], [], 0
    for batch in data:
        x, y = batch_fn(batch)
        xs.append(x.detach().cpu())
        if y is not None:
            ys.append(y.detach().cpu())
        seen += len(x)
        if seen >= max_scan:
            break
    return xs, ys


def check_method(method: str, layer: nn.Module | None, tokens: bool) -> None:
    """Raise ``ValueError`` when ``method`` cannot run on this model/input kind."""
    check_choice("method", method, METHODS)
    if method == "grad_cam":
        if tokens:
            raise ValueError("`method`='grad_cam' needs image inputs and a conv layer; token inputs are not supported")
        if not isinstance(layer, nn.modules.conv._ConvNd):
            raise ValueError(f"`layer` for grad_cam must be a Conv layer, got {type(layer).__name__}")
    if tokens and method not in _TOKEN_METHODS:
        raise ValueError(f"`method` for token inputs must be one of {list(_TOKEN_METHODS)}, got {method!r}")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the generators Captum's GradientSHAP draws from (torch's CPU generator and ``device``'s, numpy's
    global one) for this block only; the caller's generator states are restored afterwards."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str = "integrated_gradients",
    *,
    forward_fn: ForwardFn | None = None,
    layer: nn.Module | None = None,
    embedding: nn.Module | None = None,
    n_steps: int = 8,
    n_shap_samples: int = 8,
    internal_batch_size: int | None = 256,
    baseline: float | int = 0,
    window: int = 2,
    seed: int = 0,
    additional_forward_args: tuple = (),
) -> torch.Tensor:
    """Attributions of ``target`` logits to the inputs; the same shape as ``x`` (token inputs: ``(B, T)``;
    ``grad_cam``: ``(B, 1, H, W)`` upsampled to the input size).

    Integrated Gradients: ``IG(x) = (x - x') * (1/m) sum_{k=1..m} grad f(x' + (k/m)(x - x'))`` (elementwise
    product) with baseline ``x'`` = ``baseline`` and ``m`` = ``n_steps``. Grad-CAM: ``ReLU(sum_c g_c A_c)`` on
    ``layer``'s activations ``A``, ``g_c`` the spatial mean of the gradient of channel ``c``. ``model`` is used
    as it is (call ``.eval()`` first); ``internal_batch_size`` bounds memory of the path methods.
    ``additional_forward_args`` are the model's other inputs, row-aligned with ``x`` (Captum expands them).

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.attribution import attribute
        >>> from lightning_nas.models import DigitsCNN
        >>> model = DigitsCNN(width=8).eval()
        >>> x, target = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> attribute(model, x, target, method="integrated_gradients", n_steps=4).shape  # one value per pixel
        torch.Size([4, 1, 8, 8])
        >>> attribute(model, x, target, method="grad_cam", layer=model.features[3]).shape
        torch.Size([4, 1, 8, 8])
    """
    import captum.attr as ca

    afa = tuple(additional_forward_args) or None

    tokens = not torch.is_floating_point(x)
    check_method(method, layer, tokens)
    check_int("n_steps", n_steps, 1)
    fwd = forward_of(model, forward_fn)
    target = target.to(x.device)
    if tokens:
        if embedding is None:
            raise ValueError("token (integer) inputs need `embedding`, the nn.Embedding to attribute over")
        base = torch.full_like(x, int(baseline))
        if method == "integrated_gradients":
            a = ca.LayerIntegratedGradients(fwd, embedding).attribute(
                x,
                baselines=base,
                target=target,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                additional_forward_args=afa,
            )
        elif method == "saliency":
            a = ca.LayerGradientXActivation(fwd, embedding, multiply_by_inputs=False).attribute(
                x, target=target, additional_forward_args=afa
            )
        elif method == "gradient_shap":
            with _seeded(seed, x.device):
                a = ca.LayerGradientShap(fwd, embedding).attribute(
                    x, baselines=base[:1], target=target, n_samples=n_shap_samples, additional_forward_args=afa
                )
        else:  # feature_ablation / occlusion: replace one token at a time by the baseline token
            with torch.no_grad():
                return (
                    ca.FeatureAblation(fwd)
                    .attribute(x, baselines=int(baseline), target=target, additional_forward_args=afa)
                    .detach()
                    .float()
                )
        a = a[0] if isinstance(a, (tuple, list)) else a
        return a.detach().float().sum(-1)
    xin = x.detach().clone().float()
    if method == "integrated_gradients":
        a = ca.IntegratedGradients(fwd).attribute(
            xin,
            baselines=float(baseline),
            target=target,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            additional_forward_args=afa,
        )
    elif method == "saliency":
        a = ca.Saliency(fwd).attribute(xin, target=target, abs=False, additional_forward_args=afa)
    elif method == "gradient_shap":
        base = torch.stack([torch.full_like(xin[0], float(baseline)), xin.mean(0)])
        with _seeded(seed, xin.device):
            a = ca.GradientShap(fwd).attribute(
                xin, baselines=base, target=target, n_samples=n_shap_samples, additional_forward_args=afa
            )
    elif method == "occlusion":
        win = (xin.shape[1],) + tuple(min(window, s) for s in xin.shape[2:]) if xin.ndim > 2 else (window,)
        with torch.no_grad():
            a = ca.Occlusion(fwd).attribute(
                xin,
                sliding_window_shapes=win,
                baselines=float(baseline),
                target=target,
                perturbations_per_eval=64,
                additional_forward_args=afa,
            )
    elif method == "feature_ablation":
        with torch.no_grad():
            a = ca.FeatureAblation(fwd).attribute(
                xin, baselines=float(baseline), target=target, perturbations_per_eval=64, additional_forward_args=afa
            )
    else:  # grad_cam
        cam = ca.LayerGradCam(fwd, layer).attribute(
            xin, target=target, relu_attributions=True, additional_forward_args=afa
        )
        a = (
            ca.LayerAttribution.interpolate(cam, tuple(xin.shape[2:]), interpolate_mode="bilinear")
            if xin.ndim == 4
            else cam
        )
    return a.detach().float()


def _scores(fwd: Callable, x: torch.Tensor, target: torch.Tensor, batch: int, rest: tuple = ()) -> torch.Tensor:
    """Softmax probability of ``target`` (one per row), in chunks of ``batch``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            p = torch.softmax(
                fwd(x[i : i + batch], *rows_of(rest, len(x), itemgetter(slice(i, i + batch)))).float(), dim=-1
            )
            out.append(p.gather(1, target[i : i + batch].view(-1, 1)).squeeze(1))
    return torch.cat(out)


def aopc(
    model: nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor,
    *,
    forward_fn: ForwardFn | None = None,
    steps: int = 10,
    max_fraction: float = 0.5,
    baseline: float | int = 0,
    seed: int = 0,
    batch_size: int = 512,
    additional_forward_args: tuple = (),
) -> dict[str, Any]:
    """Area over the perturbation curve (Samek et al., 2017) for ``attributions`` and for a random order.

    Features (pixels, vector entries, tokens) are deleted (set to ``baseline``) most-relevant first in
    ``steps`` equal chunks up to ``max_fraction`` of them; with ``p_k`` the target's softmax probability
    after chunk ``k`` (of ``L``), ``AOPC = 1/(L+1) * sum_{k=0..L} (p_0 - p_k)``, averaged over
    samples. Higher than the random order's means the map points at evidence the model uses.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.explain.attribution import aopc, attribute
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(16, 2).eval()
        >>> with torch.no_grad():  # class 0's logit is the sum of the features, class 1's is 0
        ...     _ = model.weight.copy_(torch.stack([torch.ones(16), torch.zeros(16)]))
        ...     _ = model.bias.zero_()
        >>> x, target = torch.rand(8, 16), torch.zeros(8, dtype=torch.long)
        >>> maps = attribute(model, x, target, method="integrated_gradients", n_steps=8)
        >>> out = aopc(model, x, maps, target, steps=4)
        >>> out["aopc"] > out["aopc_random"]  # deleting what the map points at costs the model more than random
        True
    """
    check_int("steps", steps, 1)
    check_range("max_fraction", max_fraction, 0.0, 1.0, low_inclusive=False)
    fwd = forward_of(model, forward_fn)
    n = x.shape[0]
    tokens = not torch.is_floating_point(x)
    attr = attributions.detach().float().to(x.device)
    if attr.shape != x.shape:  # grad_cam (B,1,H,W) over (B,C,H,W): the same map for every channel
        attr = attr.expand_as(x) if attr.ndim == x.ndim else attr.reshape(n, -1)
    flat_attr = attr.reshape(n, -1)
    d = flat_attr.shape[1]
    gen = torch.Generator().manual_seed(seed)
    orders = {
        "aopc": flat_attr.argsort(dim=1, descending=True),
        "aopc_random": torch.stack([torch.randperm(d, generator=gen) for _ in range(n)]).to(x.device),
    }
    counts = [round(max_fraction * d * k / steps) for k in range(steps + 1)]
    flat_x = x.reshape(n, -1)
    result: dict[str, Any] = {"fractions": [c / d for c in counts]}
    variants = [flat_x]  # the intact input once, then every deletion of both orders: one batched pass
    for order in orders.values():
        for c in counts[1:]:
            v = flat_x.clone()
            if c:
                v.scatter_(1, order[:, :c], torch.full((n, c), baseline, dtype=v.dtype, device=v.device))
            variants.append(v)
    m = len(variants)
    allx = torch.stack(variants, 1).reshape((n * m,) + tuple(x.shape[1:]))
    rest = rows_of(tuple(additional_forward_args), n, lambda t: t.repeat_interleave(m, dim=0))
    p = _scores(fwd, allx, target.repeat_interleave(m), batch_size, rest).view(n, m)
    for i, name in enumerate(orders):
        curve = torch.cat([p[:, :1], p[:, 1 + i * steps : 1 + (i + 1) * steps]], dim=1)
        result[name] = float((curve[:, :1] - curve).mean())
        result[f"{name}_curve"] = curve.mean(0).tolist()
    result["tokens"] = tokens
    return result


def predict(
    model: nn.Module,
    x: torch.Tensor,
    forward_fn: ForwardFn | None = None,
    batch_size: int = 512,
    additional_forward_args: tuple = (),
) -> torch.Tensor:
    """Arg-max class of each row (no grad)."""
    fwd = forward_of(model, forward_fn)
    rest = tuple(additional_forward_args)
    with torch.no_grad():
        return torch.cat(
            [
                fwd(x[i : i + batch_size], *rows_of(rest, len(x), itemgetter(slice(i, i + batch_size)))).argmax(-1)
                for i in range(0, len(x), batch_size)
            ]
        )


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    probe: Probe | tuple[torch.Tensor, torch.Tensor | None],
    *,
    method: str = "integrated_gradients",
    target: str = "pred",
    topk: float = 0.1,
    forward_fn: ForwardFn | None = None,
    layer_a: nn.Module | None = None,
    layer_b: nn.Module | None = None,
    **kwargs: Any,
) -> AttributionDrift:
    """How much the explanation moved from ``model_a`` to ``model_b`` on ``probe``.

    Both models are attributed for the same target (``"label"``: the probe labels; ``"pred"``: model A's
    predictions), so the maps answer the same question. Per sample, ``rho`` is the Spearman rank
    correlation of ``|a|`` and ``|b|`` and top-k is ``|T_k(a) & T_k(b)| / k`` (``T_k``: the ``k`` largest
    features) with ``k = ceil(topk * d)`` over ``d`` features; agreement is the fraction of equal predictions.
    Both models are put in eval mode and restored afterwards. For token models pass ``embedding_a`` /
    ``embedding_b``; for Grad-CAM ``layer_a`` / ``layer_b``.

    Examples:
        Did pruning change what the model looks at? (Untrained models here; in practice the model before and after.)

        >>> import copy
        >>> import torch
        >>> from lightning_nas.compress import prune_structured
        >>> from lightning_nas.explain import compare
        >>> from lightning_nas.models import DigitsCNN
        >>> _ = torch.manual_seed(0)
        >>> before = DigitsCNN(width=8).eval()
        >>> after = copy.deepcopy(before)
        >>> _ = prune_structured(after, torch.rand(2, 1, 8, 8), amount=0.5)
        >>> x = torch.rand(6, 1, 8, 8)
        >>> drift = compare(before, before, (x, None), method="saliency")
        >>> round(drift.spearman, 3), drift.topk, drift.agreement  # the same model: nothing moved
        (1.0, 1.0, 1.0)
        >>> drift = compare(before, after, (x, None), method="saliency")
        >>> -1.0 <= drift.spearman <= 1.0 and len(drift.per_sample_topk) == 6
        True
    """
    check_choice("target", target, ("label", "pred"))
    check_range("topk", topk, 0.0, 1.0, low_inclusive=False)
    if not isinstance(probe, Probe):
        probe = Probe(probe[0], probe[1])
    if target == "label" and probe.y is None:
        raise ValueError("`target`='label' needs a probe with labels; use target='pred'")
    emb_a, emb_b = kwargs.pop("embedding_a", None), kwargs.pop("embedding_b", None)
    modes = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    try:
        pa, pb = predict(model_a, probe.x, forward_fn), predict(model_b, probe.x, forward_fn)
        tgt = probe.y if target == "label" else pa
        assert tgt is not None  # checked above
        a = attribute(model_a, probe.x, tgt, method, forward_fn=forward_fn, layer=layer_a, embedding=emb_a, **kwargs)
        b = attribute(model_b, probe.x, tgt, method, forward_fn=forward_fn, layer=layer_b, embedding=emb_b, **kwargs)
    finally:
        model_a.train(modes[0])
        model_b.train(modes[1])
    rho, top = rank_agreement(a, b, topk)
    return AttributionDrift(
        float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        float(np.mean(top)),
        float((pa == pb).float().mean()),
        rho.tolist(),
        top.tolist(),
    )
