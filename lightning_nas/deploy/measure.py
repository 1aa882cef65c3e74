"""Measure a model: parameters, serialized size, MACs/FLOPs, and latency in torch eager and ONNX Runtime."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any, cast

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_int


@dataclass
class Measurement:
    """What ``measure`` found. Latencies are per call on the whole ``example_input`` batch, in ms."""

    params: int
    size_bytes: int
    macs: int | None
    flops: int | None
    batch_size: int
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    onnx_latency_ms: float | None = None
    onnx_latency_iqr_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _args(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` to a stream: what the weights cost on disk (packed int8
    included; a file differs by a few hundred bytes, its records are named after it).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas.deploy import serialized_size
        >>> small, large = serialized_size(nn.Linear(10, 10)), serialized_size(nn.Linear(100, 100))
        >>> 440 <= small < large  # 110 float32 values plus the file's own records
        True
    """
    counter = _ByteCounter()  # counts what torch.save writes to a buffer, without a copy of the bytes
    torch.save(model.state_dict(), cast(IO[bytes], counter))  # a raw binary stream: all torch.save writes to
    return counter.nbytes


class _ByteCounter(io.RawIOBase):
    """A write-only stream that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        self.nbytes += n
        return n


def count_params(model: nn.Module) -> int:
    """Parameters plus packed (quantized) weights, counted as elements."""
    n = sum(p.numel() for p in model.parameters())
    for mod in model.modules():  # torch.ao quantized modules keep weights outside .parameters()
        w = getattr(mod, "weight", None)
        if callable(w) and not isinstance(w, (torch.Tensor, nn.Module)):
            try:
                t = w()
            except Exception:
                continue
            if isinstance(t, torch.Tensor) and t.is_quantized:
                n += t.numel()
    return n


def _has_quantized(model: nn.Module) -> bool:
    return any(
        type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
        for m in model.modules()
    )


def count_macs(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter`` (MACs = FLOPs / 2).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.deploy import count_macs
        >>> count_macs(nn.Linear(64, 10), torch.rand(1, 64))  # 64 x 10 multiply-adds per sample
        640
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*_args(example_input))
    return int(fc.get_total_flops()) // 2


def time_call(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def measure_latency(model: nn.Module, example_input: Any, repeats: int = 30, warmup: int = 5) -> tuple[float, float]:
    """Median and inter-quartile range (ms) of ``model(example_input)`` in eval mode under ``no_grad``.

    Examples:
        >>> import torch
        >>> from lightning_nas.deploy import measure_latency
        >>> median_ms, iqr_ms = measure_latency(torch.nn.Linear(64, 10), torch.rand(32, 64), repeats=5, warmup=1)
        >>> median_ms > 0 and iqr_ms >= 0
        True
    """
    args = _args(example_input)
    with torch.no_grad():
        return time_call(lambda: model(*args), repeats, warmup)


def measure(
    model: nn.Module,
    example_input: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    latency: bool = True,
    onnx: bool = True,
) -> Measurement:
    """Measure ``model`` on ``example_input`` (a tensor or tuple of tensors; its batch is the timed batch).

    Returns parameter count, serialized size in bytes, MACs and FLOPs, and median/IQR latency in torch eager
    (``latency=True``) and in ONNX Runtime on CPU (``onnx=True``). The model is measured in eval mode and
    put back in its previous mode. Raises ``ValueError`` naming the problem when the model cannot run on
    ``example_input``.

    Examples:
        >>> import torch
        >>> from lightning_nas.deploy import measure
        >>> from lightning_nas.models import DigitsCNN
        >>> m = measure(DigitsCNN(width=8), torch.rand(64, 1, 8, 8), repeats=3, warmup=1, onnx=False)
        >>> m.params, m.macs, m.batch_size  # MACs of the whole batch of 64
        (1466, 5023744, 64)
        >>> m.latency_ms > 0, m.onnx_latency_ms
        (True, None)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    args = _args(example_input)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError(
            f"`example_input` must be a tensor or a tuple of tensors, got {[type(a).__name__ for a in args]}"
        )
    with eval_mode(model):
        notes: list[str] = []
        try:
            with torch.no_grad():
                model(*args)
        except Exception as exc:
            shapes = [tuple(a.shape) for a in args]
            raise ValueError(
                f"measure: {type(model).__name__} cannot run on example_input of shape(s) {shapes}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            macs = count_macs(model, args)
        except Exception as exc:
            macs = None
            notes.append(f"MACs not counted: {type(exc).__name__}: {exc}")
        if macs == 0 and _has_quantized(model):  # flop_counter has no formulas for quantized:: kernels
            macs = None
            notes.append("MACs not counted: torch.utils.flop_counter does not see quantized (int8) kernels")
        m = Measurement(
            params=count_params(model),
            size_bytes=serialized_size(model),
            macs=macs,
            flops=None if macs is None else 2 * macs,
            batch_size=int(args[0].shape[0]),
            notes=notes,
        )
        if latency:
            m.latency_ms, m.latency_iqr_ms = measure_latency(model, args, repeats, warmup)
        if onnx:
            try:
                from lightning_nas.deploy.export import onnx_bytes, onnx_session

                sess = onnx_session(onnx_bytes(model, args))
                feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
                m.onnx_latency_ms, m.onnx_latency_iqr_ms = time_call(lambda: sess.run(None, feeds), repeats, warmup)
            except Exception as exc:
                notes.append(f"ONNX latency not measured: {str(exc)[:300]}")
        return m


def compare(reference: nn.Module, candidate: nn.Module, example_input: Any, repeats: int = 10) -> dict[str, float]:
    """Size and eager CPU latency of ``candidate`` (e.g. an int8 model) against ``reference`` (its float
    original), measured one after the other on ``example_input``; ``reference`` goes back to its device after.

    Returns ``reference_size_bytes``, ``candidate_size_bytes``, ``size_ratio`` (candidate / reference),
    ``reference_latency_ms``, ``candidate_latency_ms`` (medians) and ``speedup`` (reference / candidate).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import post_training_quantize
        >>> from lightning_nas.deploy import compare
        >>> from lightning_nas.models import DigitsCNN
        >>> fp32 = DigitsCNN(width=16).eval()
        >>> int8 = post_training_quantize(fp32, [torch.rand(16, 1, 8, 8)])
        >>> numbers = compare(fp32, int8, torch.rand(64, 1, 8, 8), repeats=3)
        >>> sorted(numbers)  # doctest: +NORMALIZE_WHITESPACE
        ['candidate_latency_ms', 'candidate_size_bytes', 'reference_latency_ms', 'reference_size_bytes', 'size_ratio',
         'speedup']
        >>> numbers["size_ratio"] < 0.5  # int8 weights: about a quarter of the float bytes, plus scales and records
        True
    """
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    reference.cpu()
    try:
        ref = measure(reference, example_input, onnx=False, repeats=repeats)
    finally:
        reference.to(device)
    cand = measure(candidate, example_input, onnx=False, repeats=repeats)
    assert ref.latency_ms is not None and cand.latency_ms is not None  # measure() times by default
    return {
        "reference_size_bytes": ref.size_bytes,
        "candidate_size_bytes": cand.size_bytes,
        "size_ratio": cand.size_bytes / ref.size_bytes,
        "reference_latency_ms": ref.latency_ms,
        "candidate_latency_ms": cand.latency_ms,
        "speedup": ref.latency_ms / cand.latency_ms,
    }
