"""Which layers quantization hurts: per-layer SQNR and per-layer quantization sensitivity.

Both work on a QAT-prepared model (``compress.quantize.prepare_qat``) by switching its fake-quantizers on
and off; observers are frozen meanwhile and every flag is restored afterwards, so nothing leaks into the
scales. Hand-written: no maintained library reports these for torch.ao FX models.

* SQNR of layer l, in dB: ``10 log10( sum f_l^2 / sum (f_l - q_l)^2 )`` where ``f_l`` is the layer's output
  with every fake-quantizer off (float) and ``q_l`` with every fake-quantizer on (the error accumulated up to
  and including layer l, as the int8 model sees it).
* Sensitivity of layer l: accuracy with only layer l quantized (its weight, input and output fake-quantizers
  on, all others off); ``drop = float accuracy - that accuracy``. Rows use the table format shared with
  pruning sensitivity: ``SENSITIVITY_COLUMNS`` = layer, method, level, accuracy, drop (method ``"quant_int8"``,
  level = 8 bits), logged under ``SENSITIVITY_KEY``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas.compress.quantize import fake_quant_modules, qat_layers

if TYPE_CHECKING:
    from torch.ao.quantization import FakeQuantizeBase

SENSITIVITY_KEY = "explain/sensitivity"
SENSITIVITY_COLUMNS = ["layer", "method", "level", "accuracy", "drop"]


@contextmanager
def _frozen_flags(model: nn.Module) -> Iterator[list[tuple[str, FakeQuantizeBase]]]:
    """Freeze observers for the duration; restore every fake-quantizer's flags and the train mode after."""
    fqs = fake_quant_modules(model)
    saved = [(m.observer_enabled.clone(), m.fake_quant_enabled.clone()) for _, m in fqs]
    try:
        for _, m in fqs:
            m.disable_observer()
        with eval_mode(model):
            yield fqs
    finally:
        for (_, m), (obs, fq) in zip(fqs, saved):
            m.observer_enabled.copy_(obs)
            m.fake_quant_enabled.copy_(fq)


def _set_all(fqs: Sequence[tuple[str, FakeQuantizeBase]], on: bool) -> None:
    for _, m in fqs:
        m.enable_fake_quant(on)


def _layer_quantizers(model: nn.Module, layer: str) -> list[str]:
    """Fake-quantizer names of one layer: its weight's, and the activation ones right before and after it."""
    names = [f"{layer}.weight_fake_quant"]
    graph = getattr(model, "graph", None)
    if graph is None:
        return names
    fq_names = {n for n, _ in fake_quant_modules(model)}
    for node in graph.nodes:
        if node.op == "call_module" and node.target == layer:
            for a in node.args:
                if isinstance(a, torch.fx.Node) and a.op == "call_module" and a.target in fq_names:
                    names.append(a.target)
            names += [u.target for u in node.users if u.op == "call_module" and u.target in fq_names]
    return names


def _args(batch: Any) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def layer_sqnr(model: nn.Module, inputs: Iterable[Any], forward: Callable[..., Any] | None = None) -> dict[str, float]:
    """SQNR in dB of every fake-quantized layer's output (float vs fake-quant), summed over ``inputs``.

    Math: with ``y`` a layer's output with every quantizer off and ``y_q`` with them on, summed over all
    elements of all ``inputs``: ``SQNR = 10 log10(sum y^2 / sum (y - y_q)^2)`` dB (``inf`` when equal). Each
    bit of precision adds about 6 dB; int8 layers with well-fitted ranges sit around 30-40 dB.

    ``forward`` runs a batch through the model (default: ``model``); use it when the prepared model is a
    submodule of a larger one (e.g. the LightningModule).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.explain import layer_sqnr
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(16, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> _ = qat(x)  # observe ranges
        >>> sqnr = layer_sqnr(qat.eval(), [x])
        >>> sorted(sqnr)
        ['classifier', 'features.0', 'features.3']
        >>> all(v > 10 for v in sqnr.values())  # dB: int8 keeps the signal well above the rounding noise
        True
    """
    fwd = forward or model
    layers = qat_layers(model)
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o.detach().float()))
        for n in layers
    ]
    sig = dict.fromkeys(layers, 0.0)
    noise = dict.fromkeys(layers, 0.0)
    try:
        with _frozen_flags(model) as fqs, torch.no_grad():
            for batch in inputs:
                _set_all(fqs, False)
                fwd(*_args(batch))
                ref = dict(outs)
                _set_all(fqs, True)
                fwd(*_args(batch))
                for n in layers:
                    if n in ref and n in outs:
                        sig[n] += float(ref[n].pow(2).sum())
                        noise[n] += float((ref[n] - outs[n]).pow(2).sum())
    finally:
        for h in hooks:
            h.remove()
    return {n: (math.inf if noise[n] == 0 else 10.0 * math.log10(max(sig[n], 1e-30) / noise[n])) for n in layers}


def _accuracy(fwd: Callable[..., Any], batches: Sequence[tuple[Any, torch.Tensor]]) -> float:
    correct = total = 0
    for x, y in batches:
        logits = fwd(*_args(x))
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def quant_sensitivity(
    model: nn.Module,
    batches: Sequence[tuple[Any, torch.Tensor]],
    forward: Callable[..., Any] | None = None,
    layers: Sequence[str] | None = None,
) -> list[list[Any]]:
    """One row per layer: ``[layer, "quant_int8", 8, accuracy, drop]`` (``SENSITIVITY_COLUMNS``).

    ``batches`` are ``(input, integer labels)`` pairs; accuracy is top-1 of the logits' last dimension with
    only that layer quantized; ``drop`` = float accuracy (all quantizers off) - that accuracy. ``layers`` limits the
    table to those layers (one pass over ``batches`` each; default every quantized layer).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.explain import quant_sensitivity
        >>> from lightning_nas.models import DigitsCNN
        >>> x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> _ = qat(x)
        >>> rows = quant_sensitivity(qat.eval(), [(x, y)])
        >>> [(r[0], r[1], r[2]) for r in rows]  # then accuracy with only that layer quantized, and the drop
        [('features.0', 'quant_int8', 8), ('features.3', 'quant_int8', 8), ('classifier', 'quant_int8', 8)]
    """
    fwd = forward or model
    rows: list[list[Any]] = []
    with _frozen_flags(model) as fqs, torch.no_grad():
        _set_all(fqs, False)
        baseline = _accuracy(fwd, batches)
        by_name = dict(fqs)
        for layer in qat_layers(model) if layers is None else [n for n in qat_layers(model) if n in set(layers)]:
            _set_all(fqs, False)
            for n in _layer_quantizers(model, layer):
                if n in by_name:
                    by_name[n].enable_fake_quant(True)
            acc = _accuracy(fwd, batches)
            rows.append([layer, "quant_int8", 8, acc, baseline - acc])
    return rows


__all__ = ["SENSITIVITY_COLUMNS", "SENSITIVITY_KEY", "layer_sqnr", "quant_sensitivity"]
