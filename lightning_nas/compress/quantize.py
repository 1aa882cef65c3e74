"""Quantization-aware training (QAT) down to a real int8 model: torch int8 on CPU and an ONNX QDQ graph.

Why this stack (measured on torch 2.13 CPU, onnxruntime 1.32, a digits conv net; see BENCHMARKS.md):

* ``torch.ao.quantization`` FX QAT (``prepare_qat_fx`` / ``convert_fx``) is deprecated but is the only
  maintained flow that yields *fast* int8 CPU modules in eager torch (fbgemm/x86 ``QuantizedConvReLU2d``,
  ``QuantizedLinear``): 5-7x faster than fp32 at batch 64 on one thread. FX also fuses Conv+BN(+ReLU) into QAT
  modules that simulate the folded BatchNorm, uses per-channel symmetric int8 weights, and keeps ``ignore`` names
  float.
* PT2E (torchao 0.18 ``prepare_qat_pt2e`` / ``convert_pt2e``; torch 2.13 no longer ships
  ``torch.ao.quantization.quantize_pt2e``) was measured against it (``benchmarks/qat_pt2e.py``, SmallCNN(64),
  batch 64, one thread, interleaved rounds): int8 accuracy as a fine-tune equal (98.15% in all three flows);
  from the start at Adam 1e-2 FX + ``QATRecipe`` 97.78% vs PT2E X86 95.56% / XNNPACK 92.59% (their own QAT
  configs). The converted PT2E model is a reference graph (dequantize -> fp32 op -> quantize): eager int8
  4.76 ms (X86) / 4.26 ms (XNNPACK), slower than fp32's 3.34 ms, vs FX's 1.09 ms; only ``torch.compile``
  (Inductor, ``freezing=True``; a C++ compiler at run time, a compile per input shape) brings X86 to 1.02 ms,
  and the XNNPACK model does not compile. ONNX: only through the dynamo exporter (needs onnxscript, not a
  dependency; the TorchScript exporter fails on ``quantized_decomposed::dequantize_per_channel``); in ONNX
  Runtime the three int8 files run alike (1.48-1.50 ms vs fp32 2.53 ms). ``torch.export`` + prepare 1.4 / 2.6 s
  vs FX's 0.0 s. Decision: keep FX; revisit when torch removes ``torch.ao.quantization`` (it warns it is
  deprecated) or when PT2E's int8 model runs fast in eager torch.
* The ONNX int8 model is the TorchScript-based export (``dynamo=False``) of the *converted* int8 module:
  every quantized op becomes ``QuantizeLinear``/``DequantizeLinear`` around a float op, with the very int8
  weights, per-channel scales and activation scales that torch uses, and the batch axis stays dynamic.
  ONNX Runtime fuses the pairs into ``QLinearConv``/``QGemm``/``QLinearGlobalAveragePool`` (checked by
  ``int8_onnx_ops``). The alternatives were worse on evidence: the FX-*prepared* model exports with neither
  exporter (fused observer op, data-dependent observer branch); swapping fake-quant modules for
  ``torch.fake_quantize_per_*_affine`` exports QDQ with a fixed batch only; ORT's ``quantize_static`` would
  re-calibrate and discard the QAT scales.

The recipe (``QATRecipe``, measured in ``benchmarks/qat_recipe.py`` and ``benchmarks/_qat_alternatives.py``).
torch.ao's default QAT qconfig collapses a fit from its start at the user's learning rate (SmallCNN(64), Adam
1e-2: int8 accuracy 0.10, float 0.98; also Adam 1e-3 and SGD 0.1 on some models). Root cause, measured step by
step: activation ranges are moving averages of min/max with constant 0.01 (~100-step memory). One Adam step at
1e-2 moves the logits from [-0.39, 0.30] to [-6.2, 5.4] while their range moves to [-0.45, 0.35]: 95% of the
logits are clipped at step 1, 100% from step 2 on. A clipped value gets no gradient through the straight-through
estimator, so nothing pulls the logits back; they keep growing (to [-66, 42] by step 55) faster than the range
(to [-18.5, 12.0]), the loss climbs 2.3 -> 20. Switching off only that one fake-quantizer (the logits') trains
normally; switching off only the weights' does not help. Weight ranges lag too (the same 0.01 average: every
channel of every layer clipped from step 1 at Adam 1e-2). Freezing the ranges after 2 epochs does the same to a
fit that had started well (``start_epoch=1``: 0.60 -> 0.14), as the logits grow past the frozen range. The
recipe: activation ranges average with 0.1; weight ranges are the exact current per-channel min/max, never
frozen by default; a short observe-only warm-up before fake quantization. Not chosen, on the numbers: learnable
scales (LSQ, ``_LearnableFakeQuantize``: unstable at Adam 1e-2, and its scales train with the user's optimizer,
learning rate and weight decay), BatchNorm frozen late (collapsed fits at Adam 1e-2 and SGD 0.1), a float
warm-up (``start_epoch``) as the fix (not needed once ranges follow; the default stays 0).

The x86 fused fake-quant modules keep updating their observers in ``eval()``: call ``set_observers(model,
False)`` before any evaluation so held-out data never leaks into the scales.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from lightning_nas._validate import check_choice, check_int, check_range, check_type

if TYPE_CHECKING:  # torch.ao is imported where it is used
    from torch.ao.quantization import FakeQuantizeBase
    from torch.fx import GraphModule

BACKENDS = ("x86", "fbgemm")
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation warnings (the flow is chosen on purpose, see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quantizable_layers(model: nn.Module, ignore: Sequence[str] = ()) -> list[str]:
    """Names of the Conv/Linear layers of ``model`` that QAT quantizes (those under an ``ignore`` name excluded).

    Examples:
        >>> from lightning_nas.compress.quantize import quantizable_layers
        >>> from lightning_nas.models import DigitsCNN
        >>> quantizable_layers(DigitsCNN(width=8))
        ['features.0', 'features.3', 'classifier']
        >>> quantizable_layers(DigitsCNN(width=8), ignore=["classifier"])
        ['features.0', 'features.3']
    """

    def ignored(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in ignore)

    return [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE) and not ignored(n)]


def _check_ignore(model: nn.Module, ignore: Sequence[str]) -> None:
    names = {n for n, _ in model.named_modules() if n}
    for s in ignore:
        if s not in names:
            near = sorted(names)[:12]
            raise ValueError(
                f"`ignore` name {s!r} matches no submodule of {type(model).__name__}; "
                f"allowed: submodule names such as {near}"
            )


@dataclass(frozen=True)
class QATRecipe:
    """How the fake-quantizers follow the model during QAT; validated when made (``ValueError`` naming the field).

    Args:
        activation_averaging: weight of the newest batch in the moving-average min/max of each activation range
            (torch's default is 0.01: a ~100-step memory, too slow for the logits of a fit at Adam 1e-2, see the
            module docstring). ``(0, 1]``.
        weight_averaging: the same for the per-channel weight ranges; ``1.0`` (default) is the current weights'
            exact min/max at every step (weights are known exactly, averaging only makes the range lag behind
            them). ``(0, 1]``.
        observer_warmup_steps: QAT steps at the start that only observe (ranges settle, the forward stays float)
            before fake quantization is switched on. ``>= 0``.
        freeze_weight_ranges: when the observers freeze (``freeze_observers_after``), freeze the weight ranges
            too (torch's behaviour); default ``False``: only activation ranges freeze, weight ranges keep
            following the weights, so a weight that grows after the freeze is not clipped.

    ``QATRecipe.torch_default()`` is torch.ao's own recipe (the one that collapses), kept for comparison.

    Examples:
        >>> from lightning_nas.compress.quantize import QATRecipe
        >>> QATRecipe().activation_averaging, QATRecipe.torch_default().activation_averaging
        (0.1, 0.01)
        >>> QATRecipe(activation_averaging=0)
        Traceback (most recent call last):
        ...
        ValueError: ...
    """

    activation_averaging: float = 0.1
    weight_averaging: float = 1.0
    observer_warmup_steps: int = 20
    freeze_weight_ranges: bool = False

    def __post_init__(self) -> None:
        check_range("activation_averaging", self.activation_averaging, 0.0, 1.0, low_inclusive=False)
        check_range("weight_averaging", self.weight_averaging, 0.0, 1.0, low_inclusive=False)
        check_int("observer_warmup_steps", self.observer_warmup_steps, 0)
        check_type("freeze_weight_ranges", self.freeze_weight_ranges, bool)

    @classmethod
    def torch_default(cls) -> QATRecipe:
        """torch.ao's default QAT recipe: 0.01 moving averages for all ranges, no warm-up, all ranges freeze."""
        return cls(activation_averaging=0.01, weight_averaging=0.01, observer_warmup_steps=0, freeze_weight_ranges=True)


def _qconfig_mapping(backend: str, ignore: Sequence[str], qat: bool, recipe: QATRecipe | None = None) -> Any:
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping, get_default_qconfig_mapping

    with _quiet():
        mapping = (get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping)(backend)
        if recipe is not None:  # same fake-quantizers and dtypes as torch's, with the recipe's range averaging
            default = mapping.global_qconfig
            assert default is not None  # torch's default mappings have one
            ours = QConfig(
                activation=default.activation.with_args(averaging_constant=recipe.activation_averaging),
                weight=default.weight.with_args(averaging_constant=recipe.weight_averaging),
            )
            mapping.set_global(ours)
            for key, qconfig in list(mapping.object_type_qconfigs.items()):
                if qconfig == default:  # fixed-qparams ops (sigmoid, tanh, ...) keep their own
                    mapping.set_object_type(key, ours)
        for s in ignore:
            mapping.set_module_name(s, None)
    return mapping


def _prepare(
    model: nn.Module,
    example_inputs: tuple,
    backend: str,
    ignore: Sequence[str],
    qat: bool,
    recipe: QATRecipe | None = None,
) -> GraphModule:
    check_choice("backend", backend, BACKENDS)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    ignore = list(ignore)
    _check_ignore(model, ignore)
    if not quantizable_layers(model, ignore):
        raise ValueError(
            f"{type(model).__name__} has no quantizable layer (allowed: {[t.__name__ for t in QUANTIZABLE]}"
            f" outside `ignore`={ignore}); QAT would leave it float"
        )
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    custom = PrepareCustomConfig().set_non_traceable_module_names(ignore)
    try:
        with _quiet():
            fn = prepare_qat_fx if qat else prepare_fx
            return fn(
                model, _qconfig_mapping(backend, ignore, qat, recipe), example_inputs, prepare_custom_config=custom
            )
    except Exception as exc:
        raise ValueError(
            f"torch.fx could not trace {type(model).__name__} for quantization ({type(exc).__name__}: "
            f"{str(exc)[:300]}). Choose a traceable submodule (QuantizationAware(module_name=...)) or "
            "keep the untraceable part float with ignore=[...]"
        ) from exc


def prepare_qat(
    model: nn.Module,
    example_inputs: tuple = (),
    backend: str = "x86",
    ignore: Sequence[str] = (),
    recipe: QATRecipe | None = None,
) -> nn.Module:
    """Return ``model`` prepared for QAT: an FX ``GraphModule`` with Conv+BN(+ReLU) fused into QAT modules,
    per-channel symmetric int8 fake-quantized weights and per-tensor affine uint8 fake-quantized activations,
    whose ranges follow ``recipe`` (default ``QATRecipe()``; drive its warm-up and freezing with
    ``apply_qat_schedule``).

    The result shares ``model``'s parameters and BatchNorm buffers (an optimizer built on ``model`` still
    trains it). ``ignore`` names submodules kept float (and not traced). Raises ``ValueError`` for an ``ignore``
    name that matches nothing, a model without Conv/Linear layers, or a model FX cannot trace.
    The fake quantization is q(x) = (clamp(round(x/s) + z, q_min, q_max) - z) * s, straight-through gradient.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import convert_int8, prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(4, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))  # train this (it shares the model's parameters)
        >>> qat.train()(x).shape
        torch.Size([4, 10])
        >>> int8 = convert_int8(qat)
        >>> int8(x).shape
        torch.Size([4, 10])
    """
    recipe = QATRecipe() if recipe is None else check_type("recipe", recipe, QATRecipe)
    return _init_weight_qparams(_prepare(model, tuple(example_inputs), backend, ignore, qat=True, recipe=recipe))


def _init_weight_qparams(model: nn.Module) -> nn.Module:
    """Size each per-channel weight quantizer's scale / zero-point to the layer's channels (1.0 / 0) now.

    torch sizes them on the first forward with ``resize_``, which leaves the new elements uninitialised (any
    bytes, NaN included) until an observer runs: before QAT starts they would reach checkpoints and make two
    identical states compare unequal."""
    for mod in model.modules():
        fq = getattr(mod, "weight_fake_quant", None)
        weight = getattr(mod, "weight", None)
        if fq is None or weight is None or not getattr(fq, "is_per_channel", False):
            continue
        channels = weight.shape[fq.ch_axis]
        if fq.scale.numel() != channels:
            fq.scale = torch.ones(channels, dtype=fq.scale.dtype, device=fq.scale.device)
            fq.zero_point = torch.zeros(channels, dtype=fq.zero_point.dtype, device=fq.zero_point.device)
    return model


def fake_quant_modules(model: nn.Module) -> list[tuple[str, FakeQuantizeBase]]:
    """``(name, module)`` of every fake-quantizer (weights and activations) in a prepared model.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.compress.quantize import fake_quant_modules
        >>> from lightning_nas.models import DigitsCNN
        >>> qat = prepare_qat(DigitsCNN(width=8), (torch.rand(8, 1, 8, 8),))
        >>> len(fake_quant_modules(qat)) > 3  # one per weight and one per activation
        True
    """
    from torch.ao.quantization import FakeQuantizeBase

    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)]


def qat_layers(model: nn.Module) -> list[str]:
    """Names of the fake-quantized layers (those with a ``weight_fake_quant``) in a prepared model.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import qat_layers
        >>> qat_layers(qat)
        ['features.0', 'features.3', 'classifier']
    """
    return [n for n, m in model.named_modules() if hasattr(m, "weight_fake_quant")]


def set_observers(model: nn.Module, enabled: bool) -> None:
    """Enable or freeze every observer (frozen: scales and zero-points stop moving).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import quant_state, set_observers
        >>> _ = qat(x)
        >>> set_observers(qat, False)  # frozen: scales and zero-points stop moving
        >>> before = {k: v.clone() for k, v in quant_state(qat).items() if k.endswith("scale")}
        >>> _ = qat(10 * x)
        >>> all(torch.equal(before[k], v) for k, v in quant_state(qat).items() if k.endswith("scale"))
        True
    """
    from torch.ao.quantization import disable_observer, enable_observer

    model.apply(enable_observer if enabled else disable_observer)


def _set_weight_observers(model: nn.Module, enabled: bool) -> None:
    for mod in model.modules():
        fq = getattr(mod, "weight_fake_quant", None)
        if fq is not None:
            fq.enable_observer(enabled)


def apply_qat_schedule(
    model: nn.Module,
    recipe: QATRecipe,
    *,
    active: bool,
    qat_steps: int,
    observers_frozen: bool = False,
    bn_frozen: bool = False,
    training: bool = True,
) -> None:
    """Put a prepared model in the state ``recipe`` asks for at this point of QAT.

    ``active``: QAT has started (else everything is bypassed: float training). ``qat_steps``: QAT training steps
    done so far; the first ``recipe.observer_warmup_steps`` of them only observe (fake quantization off).
    ``observers_frozen``: activation ranges stop moving (weight ranges too with ``recipe.freeze_weight_ranges``).
    ``training=False`` (validation, tests): no observer moves; fake quantization is on once a QAT step has run.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import QATRecipe, apply_qat_schedule, fake_quant_modules
        >>> def fake_quant_on():
        ...     return {bool(m.fake_quant_enabled) for _, m in fake_quant_modules(qat)}
        >>> recipe = QATRecipe(observer_warmup_steps=5)
        >>> apply_qat_schedule(qat, recipe, active=True, qat_steps=2)  # still warming up: observe only
        >>> fake_quant_on()
        {False}
        >>> apply_qat_schedule(qat, recipe, active=True, qat_steps=5)
        >>> fake_quant_on()
        {True}
    """
    warm = qat_steps < recipe.observer_warmup_steps
    set_fake_quant(model, active and (qat_steps > 0 if not training else not warm))
    set_observers(model, active and training and not observers_frozen)
    if active and training and observers_frozen and not recipe.freeze_weight_ranges:
        _set_weight_observers(model, True)
    set_bn_frozen(model, bn_frozen)


def loss_diverged(mean_loss: float, reference: float, factor: float, floor: float = 0.05) -> bool:
    """Whether an epoch-mean training loss has diverged: not finite, or above ``factor`` x ``reference`` (the
    reference counted as at least ``floor``, so that noise around a near-zero loss is not called divergence).

    Examples:
        >>> from lightning_nas.compress.quantize import loss_diverged
        >>> loss_diverged(0.9, reference=0.4, factor=3.0), loss_diverged(1.5, reference=0.4, factor=3.0)
        (False, True)
        >>> loss_diverged(0.1, reference=0.001, factor=3.0)  # the reference counts as at least 0.05
        False
        >>> loss_diverged(float("nan"), reference=0.4, factor=3.0)
        True
    """
    import math

    return not math.isfinite(mean_loss) or mean_loss > factor * max(reference, floor)


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Enable or bypass every fake-quantizer (bypassed: the prepared model computes in float).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import set_fake_quant
        >>> set_fake_quant(qat, False)  # bypassed: the prepared model computes in float
        >>> _ = qat.eval()
        >>> float_out = qat(x)
        >>> set_fake_quant(qat, True)
        >>> bool((qat(x) - float_out).abs().max() > 0)  # now with int8 rounding
        True
    """
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant

    model.apply(enable_fake_quant if enabled else disable_fake_quant)


def set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) the BatchNorm statistics folded into the QAT Conv+BN modules.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import set_bn_frozen
        >>> set_bn_frozen(qat, True)  # folded BatchNorm statistics stop moving
        >>> set_bn_frozen(qat, False)
    """
    from torch.ao.nn.intrinsic import qat as nniqat

    model.apply(nniqat.freeze_bn_stats if frozen else nniqat.update_bn_stats)
    if not frozen:  # torch's update_bn_stats sets bn.training = True even in eval(): follow the module's mode
        for mod in model.modules():
            bn = getattr(mod, "bn", None)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and hasattr(mod, "freeze_bn"):
                bn.train(mod.training)


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The scales, zero-points, observer ranges and on/off flags of every fake-quantizer (for sync or checks).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import quant_state
        >>> state = quant_state(qat)  # e.g. to broadcast rank 0's ranges, or to compare two models
        >>> all(isinstance(v, torch.Tensor) for v in state.values()), any(k.endswith("scale") for k in state)
        (True, True)
    """
    return {f"{n}.{k}": v.detach().clone() for n, m in fake_quant_modules(model) for k, v in m.state_dict().items()}


@contextmanager
def allow_int8_kernels() -> Iterator[None]:
    """Lift ``torch.use_deterministic_algorithms(True)`` (``Trainer(deterministic=True)`` sets it) for the block:
    torch's int8 CPU kernels resize their outputs, which that flag forbids, though they are deterministic.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress import convert_int8
        >>> from lightning_nas.compress.quantize import allow_int8_kernels
        >>> _ = qat(x)
        >>> int8 = convert_int8(qat)
        >>> torch.use_deterministic_algorithms(True)  # what Trainer(deterministic=True) does
        >>> with allow_int8_kernels():
        ...     y = int8(x)
        >>> torch.are_deterministic_algorithms_enabled()  # restored after the block
        True
        >>> torch.use_deterministic_algorithms(False)
    """
    on, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)


def _determinism_off(module: nn.Module, args: Any) -> None:
    setattr(  # noqa: B010 (mypy types a Module's attributes Tensor | Module)
        module,
        "_lnas_deterministic",
        (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
    )
    torch.use_deterministic_algorithms(False)


def _determinism_back(module: nn.Module, args: Any, output: Any) -> None:
    on, warn_only = getattr(module, "_lnas_deterministic", (False, False))
    torch.use_deterministic_algorithms(on, warn_only=warn_only)


def _int8_runnable(model: nn.Module) -> nn.Module:
    """int8 CPU kernels resize their outputs, which ``torch.use_deterministic_algorithms(True)`` (set by
    ``Trainer(deterministic=True)``) forbids; they are deterministic on CPU, so lift the flag per call."""
    model.register_forward_pre_hook(_determinism_off)
    model.register_forward_hook(_determinism_back, always_call=True)
    return model


def refresh_weight_ranges(model: nn.Module) -> None:
    """Let exact weight-range trackers (``weight_averaging=1.0``) take the current weights, BatchNorm-folded where
    fused (as the forward and ``convert_fx`` fold them): the last optimizer step moved the weights after the last
    forward. Other weight observers, and every on/off flag, are left as they are.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress.quantize import refresh_weight_ranges
        >>> _ = qat(x)
        >>> with torch.no_grad():  # an optimizer step after the last forward
        ...     for p in qat.parameters():
        ...         _ = p.mul_(2.0)
        >>> refresh_weight_ranges(qat)  # the weight ranges now cover the new weights, before convert_int8
    """
    with torch.no_grad():
        for mod in model.modules():
            fq = getattr(mod, "weight_fake_quant", None)
            if fq is None or getattr(getattr(fq, "activation_post_process", None), "averaging_constant", 0) != 1.0:
                continue
            weight = cast(torch.Tensor, mod.weight)
            bn = getattr(mod, "bn", None)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and hasattr(mod, "freeze_bn"):
                assert bn.running_var is not None  # QAT's fused BatchNorm tracks running statistics
                gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
                factor = gamma / torch.sqrt(bn.running_var + bn.eps)
                weight = weight * factor.reshape([-1] + [1] * (weight.dim() - 1))
            was = bool(fq.observer_enabled[0])
            fq.enable_observer(True)
            fq(weight)
            fq.enable_observer(was)


def convert_int8(qat_model: nn.Module) -> nn.Module:
    """A real int8 torch model (``convert_fx``) from a prepared model; the prepared model is left untouched.

    Weights become packed int8 (per-channel scales), activations quint8, BatchNorm is folded into the convs.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import convert_int8, prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(4, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> _ = qat(x)  # observe ranges (in practice: QAT epochs)
        >>> int8 = convert_int8(qat)
        >>> sorted({type(m).__name__ for m in int8.modules() if "quantized" in type(m).__module__})
        ['ConvReLU2d', 'Linear', 'LinearPackedParams']
        >>> int8(x).shape
        torch.Size([4, 10])
    """
    model = copy.deepcopy(qat_model).cpu().eval()
    set_observers(model, False)
    refresh_weight_ranges(model)
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet():
        return _int8_runnable(convert_fx(cast("GraphModule", model)))  # a copy of the prepared GraphModule


def post_training_quantize(
    model: nn.Module, calibration: Iterable[Any], backend: str = "x86", ignore: Sequence[str] = ()
) -> nn.Module:
    """Static post-training quantization (the baseline QAT is measured against): observe ``calibration``
    batches (tensors or tuples of tensors) in float, then ``convert_fx`` with the same qconfig as QAT.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import post_training_quantize
        >>> from lightning_nas.models import DigitsCNN
        >>> calibration = [torch.rand(16, 1, 8, 8) for _ in range(4)]
        >>> int8 = post_training_quantize(DigitsCNN(width=8).eval(), calibration)
        >>> int8(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    base = copy.deepcopy(model).eval()
    prepared = _prepare(base, (), backend, ignore, qat=False)
    with torch.no_grad():
        for batch in calibration:
            prepared(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet():
        return _int8_runnable(convert_fx(prepared))


ONNX_FORMS = ("qdq", "fused", "raw")


def export_int8_onnx(
    int8_model: nn.Module, example_input: Any, path: str | Path | None = None, form: str = "qdq"
) -> bytes:
    """ONNX bytes of a converted int8 model (dynamic batch axis); also written to ``path`` when given.

    ``form``: ``"qdq"`` (default) the exporter's QDQ graph compacted by ``compact_onnx`` (portable standard
    ops, bit-identical outputs in ONNX Runtime, ~20% smaller at 32 channels); ``"fused"`` ONNX Runtime's
    offline-optimized graph (``QLinearConv``/``QGemm``: smallest, runs on ONNX Runtime's CPU provider only);
    ``"raw"`` the exporter's output as is. Raises ``RuntimeError`` naming the op when the int8 model holds an
    op the exporter does not know.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from lightning_nas.compress import convert_int8, export_int8_onnx, prepare_qat
        >>> from lightning_nas.deploy import onnx_session
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(4, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> _ = qat(x)
        >>> path = os.path.join(tempfile.mkdtemp(), "model_int8.onnx")
        >>> data = export_int8_onnx(convert_int8(qat), x, path)
        >>> session = onnx_session(data)
        >>> session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].shape
        (4, 10)
    """
    from lightning_nas.compress.quantize_onnx import compact_onnx
    from lightning_nas.deploy.export import onnx_bytes

    check_choice("form", form, ONNX_FORMS)
    with _quiet(), allow_int8_kernels():  # tracing bypasses the per-call hooks of _int8_runnable
        data = onnx_bytes(int8_model, example_input)
    if form != "raw":
        data = compact_onnx(data, fuse=form == "fused")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def int8_onnx_ops(onnx_model: bytes) -> list[str]:
    """The op types ONNX Runtime actually runs after its graph optimizations (e.g. ``QLinearConv``).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress import convert_int8, export_int8_onnx
        >>> from lightning_nas.compress.quantize import int8_onnx_ops
        >>> _ = qat(x)
        >>> ops = int8_onnx_ops(export_int8_onnx(convert_int8(qat), x))
        >>> "QLinearConv" in ops
        True
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


__all__ = [
    "BACKENDS",
    "ONNX_FORMS",
    "QUANTIZABLE",
    "QATRecipe",
    "allow_int8_kernels",
    "apply_qat_schedule",
    "convert_int8",
    "export_int8_onnx",
    "fake_quant_modules",
    "int8_onnx_ops",
    "loss_diverged",
    "refresh_weight_ranges",
    "post_training_quantize",
    "prepare_qat",
    "qat_layers",
    "quant_state",
    "quantizable_layers",
    "set_bn_frozen",
    "set_fake_quant",
    "set_observers",
]
