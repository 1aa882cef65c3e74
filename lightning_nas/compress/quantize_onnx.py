"""Compact ONNX files for the int8 (and float) models we ship: same graph, same outputs, fewer bytes.

What the TorchScript exporter writes around a converted int8 model is not the int8 data: at a 32-channel digits
CNN the weights are 19.4 kB but the QDQ file was 29.1 kB. The rest is one ``Constant`` node per scale,
zero-point and weight (each with a long ``/3/Constant_7_output_0``-style name repeated at every use),
``ConstantOfShape``/``Cast`` chains that build all-zero bias zero-points, ``Cast`` nodes between every
``QuantizeLinear`` and ``DequantizeLinear``, the same activation scale stored once per use, and explicit
all-zero zero-point vectors of the symmetric per-channel weights. ``compact_onnx`` removes all of that:

1. ONNX Runtime's *basic* offline optimization (constant folding, redundant-node elimination, common
   subexpression elimination); it keeps every ``QuantizeLinear``/``DequantizeLinear`` pair (standard ONNX ops
   only), so the file stays a portable QDQ model. With ``fuse=True`` the *extended* level is saved instead: the
   pairs are already fused into ``QLinearConv``/``QGemm``/``QLinearGlobalAveragePool`` (ONNX Runtime contrib ops:
   the file then runs on ONNX Runtime's CPU provider only), which drops the float bias scales too.
2. Identical initializers stored once; all-zero zero-points of constant int8/int32 tensors dropped (the ONNX
   default is 0) or, where an op requires the input (``QLinearConv``/``QGemm`` weight zero-point), stored as
   one scalar 0.
3. Every internal tensor renamed to a short name, node names and doc strings removed. Graph input and output
   names are kept.

``check_same_outputs`` runs both files in ONNX Runtime and requires bit-identical outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_ZP_INPUT = {"DequantizeLinear": 2}  # zero-point input index that may be dropped when all zero
_KEEP_ZP_FOR = {"Gemm", "MatMul"}  # ONNX Runtime fuses DQ->Gemm into QGemm only with explicit zero-points
_ZP_REQUIRED = {"QLinearConv": (5,)}  # weight zero-point: required, may be a scalar (QGemm needs scale shape)


def _ort_optimized(data: bytes, extended: bool) -> bytes:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if extended else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        )
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return Path(opts.optimized_model_filepath).read_bytes()


def _short(i: int) -> str:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    s = chars[i % 26]
    i //= 26
    while i:
        s += chars[i % 36]
        i //= 36
    return s


def _fused_ops(data: bytes) -> list[str]:
    import onnx

    return sorted(n.op_type for n in onnx.load_from_string(_ort_optimized(data, True)).graph.node)


def compact_onnx(data: bytes, fuse: bool = False) -> bytes:
    """The ONNX model ``data`` with the same computation in fewer bytes (see the module docstring).

    ``fuse=False`` keeps a standard QDQ (or float) graph; ``fuse=True`` saves ONNX Runtime's fused int8 graph.
    Zero-points are only dropped where ONNX Runtime still fuses the same int8 kernels without them.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import prepare_qat
        >>> from lightning_nas.models import DigitsCNN
        >>> x = torch.rand(8, 1, 8, 8)
        >>> qat = prepare_qat(DigitsCNN(width=8), (x,))
        >>> from lightning_nas.compress import convert_int8, export_int8_onnx
        >>> from lightning_nas.compress.quantize_onnx import check_same_outputs, compact_onnx
        >>> _ = qat(x)
        >>> raw = export_int8_onnx(convert_int8(qat), x, form="raw")
        >>> small = compact_onnx(raw)
        >>> len(small) < len(raw)
        True
        >>> check_same_outputs(raw, small, x.numpy())  # bit-identical in ONNX Runtime (raises otherwise)
    """
    optimized = _ort_optimized(data, fuse)
    out = _compact(optimized, drop_zero_points=True)
    if not fuse and _fused_ops(out) != _fused_ops(optimized):  # e.g. the QDQ Gemm selector wants its zero-points
        out = _compact(optimized, drop_zero_points=False)
    return out


def _drop_constant_zero_points(g: Any, inits: dict[str, Any], is_zero_const: Callable[[str], bool]) -> None:
    """Remove the all-zero zero-point input of dequantized constant int8 weights / int32 biases (optional input:
    it defaults to 0), except where a consumer needs it spelled out."""
    import onnx

    consumers: dict[str, set[str]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.op_type)
    for node in g.node:
        idx = _ZP_INPUT.get(node.op_type)
        if (
            idx is not None
            and not consumers.get(node.output[0], set()) & _KEEP_ZP_FOR
            and len(node.input) == idx + 1
            and node.input[0] in inits
            and inits[node.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32)
            and is_zero_const(node.input[idx])
        ):
            del node.input[idx]


def _share_zero_scalars(g: Any, inits: dict[str, Any], is_zero_const: Callable[[str], bool]) -> None:
    """A required all-zero zero-point tensor becomes one shared scalar per data type."""
    from onnx import numpy_helper

    zero_scalars: dict[int, str] = {}
    for node in g.node:
        for idx in _ZP_REQUIRED.get(node.op_type, ()):
            if len(node.input) > idx and is_zero_const(node.input[idx]) and inits[node.input[idx]].dims:
                t = inits[node.input[idx]]
                if t.data_type not in zero_scalars:
                    z = numpy_helper.from_array(np.zeros((), numpy_helper.to_array(t).dtype), f"_zero{t.data_type}")
                    g.initializer.append(z)
                    inits[z.name] = z
                    zero_scalars[t.data_type] = z.name
                node.input[idx] = zero_scalars[t.data_type]


def _compact(data: bytes, drop_zero_points: bool) -> bytes:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep_names = {v.name for v in g.input} | {v.name for v in g.output}

    def is_zero_const(name: str) -> bool:
        t = inits.get(name)
        return (
            t is not None
            and t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)
            and not numpy_helper.to_array(t).any()
        )

    if drop_zero_points:
        _drop_constant_zero_points(g, inits, is_zero_const)
    _share_zero_scalars(g, inits, is_zero_const)

    # identical initializers stored once
    canon: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for t in g.initializer:
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        alias[t.name] = canon.setdefault(key, t.name)
    used = {alias.get(i, i) for n in g.node for i in n.input} | keep_names
    kept = [t for t in g.initializer if alias[t.name] == t.name and t.name in used]

    # short names for everything internal
    names: dict[str, str] = {n: n for n in keep_names}
    counter = iter(range(1 << 30))

    def rename(name: str) -> str:
        if not name:
            return name
        name = alias.get(name, name)
        if name not in names:
            short = _short(next(counter))
            while short in keep_names:  # never reuse a graph input/output name
                short = _short(next(counter))
            names[name] = short
        return names[name]

    for node in g.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    for t in kept:
        t.name = rename(t.name)
        t.doc_string = ""
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    g.name, g.doc_string, model.doc_string = "g", "", ""
    del model.metadata_props[:]
    return model.SerializeToString()


def check_same_outputs(a: bytes, b: bytes, x: np.ndarray) -> None:
    """Raise ``AssertionError`` unless ONNX Runtime gives bit-identical outputs for models ``a`` and ``b`` on ``x``.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress.quantize_onnx import check_same_outputs
        >>> from lightning_nas.deploy.export import onnx_bytes
        >>> x = torch.rand(2, 4)
        >>> a = onnx_bytes(torch.nn.Linear(4, 2), x)
        >>> check_same_outputs(a, a, x.numpy())
        >>> check_same_outputs(a, onnx_bytes(torch.nn.Linear(4, 2), x), x.numpy())
        Traceback (most recent call last):
        ...
        AssertionError: ...
    """
    from lightning_nas.deploy.export import onnx_session

    outs = []
    for data in (a, b):
        sess = onnx_session(data, threads=1)
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    if outs[0].shape != outs[1].shape or not np.array_equal(outs[0], outs[1]):
        diff = np.abs(outs[0] - outs[1]).max() if outs[0].shape == outs[1].shape else "shape"
        raise AssertionError(f"compacted ONNX model differs from the original (max abs diff {diff})")


__all__ = ["check_same_outputs", "compact_onnx"]
