"""Export a model to ONNX (dynamic batch axis) or TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_choice

FORMATS = ("onnx", "torchscript")


def _as_tuple(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def export(model: nn.Module, example_input: Any, path: str | Path, format: str = "onnx", opset: int = 17) -> Path:
    """Write ``model`` to ``path`` and return the path.

    ``"onnx"`` uses the TorchScript-based exporter (``dynamo=False``: fast, and it handles the QDQ graphs
    of our int8 path) with the first dimension of every input and output dynamic (``"batch"``).
    ``"torchscript"`` traces the model. The model is exported in eval mode and restored afterwards.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from lightning_nas.deploy import export, onnx_session
        >>> from lightning_nas.models import DigitsCNN
        >>> folder = tempfile.mkdtemp()
        >>> path = export(DigitsCNN(width=8), torch.rand(1, 1, 8, 8), os.path.join(folder, "model.onnx"))
        >>> session = onnx_session(path)
        >>> session.run(None, {session.get_inputs()[0].name: torch.rand(5, 1, 8, 8).numpy()})[0].shape  # any batch
        (5, 10)
        >>> export(DigitsCNN(width=8), torch.rand(1, 1, 8, 8), os.path.join(folder, "m.pt"), format="torchscript").name
        'm.pt'
    """
    check_choice("format", format, FORMATS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = _as_tuple(example_input)
    with eval_mode(model):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if format == "onnx":
                    in_names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
                    with torch.no_grad():
                        out = model(*args)
                    n_out = len(out) if isinstance(out, (tuple, list)) else 1
                    out_names = [f"output{i}" if n_out > 1 else "output" for i in range(n_out)]
                    axes = {n: {0: "batch"} for n in in_names + out_names}
                    torch.onnx.export(
                        model,
                        args,
                        str(path),
                        input_names=in_names,
                        output_names=out_names,
                        dynamic_axes=axes,
                        opset_version=opset,
                        dynamo=False,
                    )
                else:
                    torch.jit.save(torch.jit.trace(model, args, check_trace=False), str(path))
        except Exception as exc:
            raise RuntimeError(
                f"export(format={format!r}) could not export {type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
    return path


def onnx_session(path_or_bytes: str | Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` (``threads`` intra-op threads; default: runtime's choice).

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from lightning_nas.deploy import onnx_session
        >>> from lightning_nas.deploy.export import onnx_bytes
        >>> session = onnx_session(onnx_bytes(torch.nn.Linear(4, 2), torch.rand(1, 4)), threads=1)
        >>> session.run(None, {session.get_inputs()[0].name: np.ones((3, 4), np.float32)})[0].shape
        (3, 2)
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_bytes(model: nn.Module, example_input: Any) -> bytes:
    """The ONNX export of ``model`` as bytes (through a temporary file).

    Examples:
        >>> import torch
        >>> from lightning_nas.deploy.export import onnx_bytes
        >>> data = onnx_bytes(torch.nn.Linear(4, 2), torch.rand(1, 4))
        >>> isinstance(data, bytes), len(data) > 100  # an ONNX protobuf, ready for onnx_session(data)
        (True, True)
    """
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = export(model, example_input, Path(d) / "model.onnx", "onnx")
        return p.read_bytes()


__all__ = ["FORMATS", "export", "onnx_bytes", "onnx_session"]
