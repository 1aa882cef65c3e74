"""A deployable bundle: one self-describing folder with the model in every runtime format and its card.

::

    bundle/
      model.onnx         float ONNX (dynamic batch)
      model.int8.onnx    int8 QDQ ONNX (when ``int8`` is given)
      model.ts           TorchScript (traced)
      profile.json       reference profile of the training/validation data (when ``reference_data`` is given)
      card.json          the model card + ``bundle`` section: format, input/output spec, sha256 of each file
      bundle.sha256      ``sha256sum -c`` manifest of every file above, card included

``load_bundle`` reads every file once, checks the card against a schema and every file's bytes against its sha256,
and keeps those bytes: the ONNX session, the TorchScript module and the profile are made from exactly the bytes
that were checked, never re-read from disk. ``bundle`` builds into a temporary folder beside ``out_dir`` and
swaps it in at the end; ``overwrite=True`` only ever replaces a folder that is a bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas._trust import UnsafePathError, inside
from lightning_nas._validate import check_type, schema_errors
from lightning_nas.deploy.card import ModelCard, jsonable
from lightning_nas.deploy.export import export, onnx_session
from lightning_nas.deploy.profile import ReferenceProfile

FORMAT = "lightning_nas.bundle"
VERSION = 1
CARD, MANIFEST = "card.json", "bundle.sha256"
FLOAT_ONNX, INT8_ONNX, TORCHSCRIPT, PROFILE = "model.onnx", "model.int8.onnx", "model.ts", "profile.json"
OUTPUT_KINDS = ("auto", "logits", "probabilities")
#: every file a bundle folder may hold; a card naming any other file is refused
BUNDLE_FILES = (FLOAT_ONNX, INT8_ONNX, TORCHSCRIPT, PROFILE)
#: largest card/manifest read (the model files are read whole anyway, to be hashed and then used)
MAX_CARD_BYTES = 16 << 20
#: largest number of elements one input may have according to a card (64 MiB of float32)
MAX_INPUT_ELEMENTS = 1 << 24
#: ONNX / TorchScript outputs must match torch within ``atol + rtol * |torch|`` (float32 kernels differ).
FLOAT_ATOL, FLOAT_RTOL = 1e-4, 1e-3


def sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file at ``path`` (read in 1 MiB chunks): what a bundle's card and manifest record.

    Examples:
        >>> import os
        >>> import tempfile
        >>> from lightning_nas.deploy.bundle import sha256
        >>> path = os.path.join(tempfile.mkdtemp(), "empty")
        >>> open(path, "wb").close()
        >>> sha256(path)
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BundleError(ValueError):
    """A folder that is not a valid bundle, or one whose files do not match their recorded hashes."""


# ------------------------------------------------------------------------------------------------ card schema
def _card_models() -> Any:
    """The pydantic schema of a bundle card (strict: no coercion of strings to numbers, no NaN/inf)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

    class _Strict(BaseModel):
        model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    class FileInfo(_Strict):
        sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
        bytes: Annotated[int, Field(ge=0)]

    class Output(_Strict):
        kind: Literal["logits", "probabilities"]
        num_classes: Annotated[int, Field(ge=2, le=1_000_000)]
        class_names: list[str] | None = None

        @model_validator(mode="after")
        def _names_match(self) -> Any:
            if self.class_names is not None and len(self.class_names) != self.num_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}")
            return self

    class Meta(_Strict):
        format: Literal["lightning_nas.bundle"]
        version: Literal[1]
        output: Output
        files: dict[Literal["model.onnx", "model.int8.onnx", "model.ts", "profile.json"], FileInfo]
        checks: dict[str, Any] = {}

        @model_validator(mode="after")
        def _required_files(self) -> Any:
            missing = [f for f in (FLOAT_ONNX, TORCHSCRIPT) if f not in self.files]
            if missing:
                raise ValueError(f"lists no {' / '.join(missing)}")
            return self

    class InputSpec(_Strict):
        dtype: Literal["float32"]
        shape: list[str | int]
        name: str = "input"
        normalisation: str | None = None
        range: list[float] | None = None

        @model_validator(mode="after")
        def _shape(self) -> Any:
            dims = self.shape[1:]
            if (
                not self.shape
                or self.shape[0] != "batch"
                or not 1 <= len(dims) <= 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)
            ):
                raise ValueError(
                    f"shape must be ['batch', d1, ...] with 1 to 8 positive integer sizes, got {str(self.shape)[:80]}"
                )
            if int(np.prod(cast(list[int], dims), dtype=np.float64)) > MAX_INPUT_ELEMENTS:  # checked above
                raise ValueError(f"shape {dims} has more than {MAX_INPUT_ELEMENTS} elements per input")
            return self

    class Card(_Strict):
        name: str
        input_spec: InputSpec
        bundle: Meta
        architecture: str | None = None
        stages: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        measurements: dict[str, Any] = {}

    return Card


_CARD_SCHEMA: list[Any] = []


def validate_card(card: Any, where: str = "card.json") -> dict[str, Any]:
    """Check a decoded card against the bundle-card schema; return it, or raise ``BundleError`` (one line).

    Examples:
        >>> from lightning_nas.deploy.bundle import BundleError, validate_card
        >>> validate_card({"name": "x"})
        Traceback (most recent call last):
        ...
        lightning_nas.deploy.bundle.BundleError: ...
    """
    try:
        errs = schema_errors(_CARD_SCHEMA, _card_models, card)
    except RecursionError:
        raise BundleError(f"bundle card {where!r} is invalid: nested too deeply") from None
    if errs:
        e = errs[0]
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
        raise BundleError(f"bundle card {where!r} is invalid: {loc}: {e['msg'][:200]}{more}")
    return card


def _calibrated_int8(float_path: Path, out_path: Path, data: np.ndarray, batch: int = 32) -> None:
    """Static int8 QDQ quantization with ONNX Runtime, calibrated on ``data`` (MinMax ranges)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": data[i : i + batch]} for i in range(0, len(data), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name("pre-quant.onnx")
    try:  # shape inference + graph optimisation first, as ONNX Runtime recommends; plain float graph if it fails
        quant_pre_process(str(float_path), str(pre))
    except Exception:
        shutil.copyfile(float_path, pre)
    quantize_static(
        str(pre),
        str(out_path),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
    )
    pre.unlink()


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = onnx_session(path, threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _onnx_latency_ms(path: Path, x: np.ndarray, repeats: int = 30) -> float:
    from lightning_nas.deploy.measure import time_call

    sess = onnx_session(path, threads=1)
    feeds = {sess.get_inputs()[0].name: x}
    return round(time_call(lambda: sess.run(None, feeds), repeats, 5)[0], 4)


def bundle(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    *,
    int8: bool | bytes | str | Path | None = None,
    metrics: dict[str, Any] | None = None,
    card: ModelCard | None = None,
    reference_data: torch.Tensor | np.ndarray | None = None,
    name: str | None = None,
    normalisation: str | None = None,
    output: str = "auto",
    class_names: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bundle folder (see the module docstring) and return its path.

    Args:
        model: a classifier mapping a float32 batch ``(N, *shape)`` to ``(N, classes)`` scores.
        example_input: a float batch ``(B, *shape)``; its per-sample shape becomes the card's input spec and
            its batch the measured batch.
        out_dir: the bundle folder (created; must be absent or empty unless ``overwrite``). The bundle is built in
            a temporary folder beside it and swapped in when complete, so a failure leaves ``out_dir`` as it was.
        int8: ``True``: quantize the float ONNX to int8 QDQ with ONNX Runtime, calibrated on
            ``reference_data``; ONNX bytes or a path: an int8 model made elsewhere (e.g. after QAT);
            ``None``/``False``: no int8 model.
        metrics: measured quality numbers to record (e.g. ``{"test_acc": 0.97}``).
        card: a ``ModelCard`` with the stages already recorded (search, compression); a new one otherwise.
        reference_data: training/validation inputs ``(N, *shape)`` for the drift profile and int8 calibration.
        name: bundle name (default: the card's name or the model's class name).
        normalisation: how raw inputs are scaled before the model (e.g. ``"pixel / 16"``), for the card.
        output: ``"logits"``, ``"probabilities"`` or ``"auto"`` (probabilities when every row is a
            distribution on the reference/example data).
        class_names: labels of the output classes (default ``"0".."K-1"``).
        overwrite: replace an existing bundle in ``out_dir``. A folder that is not a bundle (no bundle card, or
            files a bundle does not have) is never replaced: ``FileExistsError``.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from lightning_nas.deploy import bundle, load_bundle
        >>> from lightning_nas.models import DigitsCNN
        >>> model = DigitsCNN(width=8).eval()
        >>> path = bundle(model, torch.rand(4, 1, 8, 8), os.path.join(tempfile.mkdtemp(), "digits"),
        ...               reference_data=torch.rand(64, 1, 8, 8), metrics={"test_acc": 0.97})
        >>> sorted(p.name for p in path.iterdir())
        ['bundle.sha256', 'card.json', 'model.onnx', 'model.ts', 'profile.json']
        >>> loaded = load_bundle(path)  # every file checked against its sha256
        >>> loaded.input_shape, loaded.num_classes
        ((1, 8, 8), 10)
    """
    ref = _check_bundle_args(model, example_input, int8, metrics, card, output, reference_data)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    with eval_mode(model):
        target = out.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmpd = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            tmpd.chmod(0o777 & ~umask)  # mkdtemp makes it private; the bundle folder gets the usual permissions
            # everything is written into tmpd (beside out_dir), then swapped in whole
            files = _write_models(model, example_input.detach().cpu().float(), tmpd, int8, ref)
            check_x = (ref[:128] if ref is not None else example_input.detach().cpu().numpy()).astype(np.float32)
            with torch.no_grad():
                want = model(torch.from_numpy(check_x)).float().numpy()
            if want.ndim != 2 or want.shape[1] < 2:
                raise ValueError(f"bundle: the model must output (N, classes) scores, got shape {want.shape}")
            checks = _check_outputs(tmpd, files, check_x, want)
            if ref is not None:
                ReferenceProfile.from_data(model, ref).save(tmpd / PROFILE)
                files.append(PROFILE)
            c = card or ModelCard(name or type(model).__name__)
            c.set_model(model)
            c.metrics.update(metrics or {})
            c.measurements = _measurements(model, example_input, tmpd, files)
            c.input_spec = _input_spec(c, example_input, ref, normalisation)
            d = c.to_dict()
            d["name"] = name or c.name
            output_spec = _output_spec(want, output, class_names)
            _write_card_and_manifest(tmpd, d, files, output_spec, checks)
            _check_out_dir(out, overwrite)  # again: the folder may have changed while the bundle was built
            _swap_in(tmpd, target)
        except BaseException:
            shutil.rmtree(tmpd, ignore_errors=True)
            raise
    return out


def _check_bundle_args(
    model: Any, example_input: Any, int8: Any, metrics: Any, card: Any, output: str, reference_data: Any
) -> np.ndarray | None:
    """Validate ``bundle``'s arguments before anything is written; returns ``reference_data`` as float32 numpy."""
    check_type("model", model, nn.Module)
    check_type("example_input", example_input, torch.Tensor)
    check_type("int8", int8, (bool, bytes, str, Path), allow_none=True)
    check_type("metrics", metrics, dict, allow_none=True)
    check_type("card", card, ModelCard, allow_none=True)
    if output not in OUTPUT_KINDS:
        raise ValueError(f"`output` must be one of {list(OUTPUT_KINDS)}, got {output!r}")
    if example_input.ndim < 2 or not example_input.is_floating_point():
        raise ValueError(
            f"`example_input` must be a float batch (B, ...), got {example_input.dtype} {tuple(example_input.shape)}"
        )
    shape = tuple(int(s) for s in example_input.shape[1:])
    ref = None
    if reference_data is not None:
        ref = (
            reference_data.detach().cpu().numpy()
            if isinstance(reference_data, torch.Tensor)
            else np.asarray(reference_data)
        ).astype(np.float32)
        if len(ref) < 20:
            raise ValueError(f"`reference_data` must hold at least 20 inputs for a reference profile, got {len(ref)}")
        if tuple(ref.shape[1:]) != shape:
            raise ValueError(f"`reference_data` samples have shape {tuple(ref.shape[1:])}, example_input {shape}")
    if int8 is True and ref is None:
        raise ValueError("`int8=True` calibrates the int8 model on `reference_data`; pass reference_data")
    return ref


def _input_spec(
    c: ModelCard, example_input: torch.Tensor, ref: np.ndarray | None, normalisation: str | None
) -> dict[str, Any]:
    """The card's input spec: dtype, ``["batch", *shape]``, normalisation and the reference data's range."""
    rng = (float(ref.min()), float(ref.max())) if ref is not None else None
    return {
        "name": "input",
        "dtype": "float32",
        "shape": ["batch", *(int(s) for s in example_input.shape[1:])],
        "normalisation": normalisation or c.input_spec.get("normalisation"),
        "range": list(rng) if rng else c.input_spec.get("range"),
    }


def _output_spec(want: np.ndarray, output: str, class_names: list[str] | None) -> dict[str, Any]:
    """``{"kind", "num_classes", "class_names"}``; ``"auto"`` is probabilities when every row is a distribution."""
    kind = output
    if kind == "auto":
        is_dist = (want >= 0).all() and np.allclose(want.sum(1), 1.0, atol=1e-4)
        kind = "probabilities" if is_dist else "logits"
    k = want.shape[1]
    names = [str(n) for n in (class_names or range(k))]
    if len(names) != k:
        raise ValueError(f"`class_names` has {len(names)} names for {k} model outputs")
    return {"kind": kind, "num_classes": k, "class_names": names}


def _write_card_and_manifest(
    tmpd: Path, d: dict[str, Any], files: list[str], output_spec: dict[str, Any], checks: dict[str, Any]
) -> None:
    """Write ``card.json`` (the card plus the bundle section: format, output, checks, file hashes) and the
    sha256 manifest; intermediate files (e.g. the int8 pre-processing) are removed."""
    written = {f: tmpd / f for f in [*files, CARD]}  # trusted-path: our own file names
    d["bundle"] = {
        "format": FORMAT,
        "version": VERSION,
        "output": output_spec,
        "checks": checks,
        "files": {f: {"sha256": sha256(written[f]), "bytes": written[f].stat().st_size} for f in files},
    }
    written[CARD].write_text(json.dumps(jsonable(d), indent=2))
    (tmpd / MANIFEST).write_text("".join(f"{sha256(q)}  {f}\n" for f, q in written.items()))
    for x in tmpd.iterdir():
        if x.name not in (*written, MANIFEST):
            x.unlink()


def _is_bundle_folder(p: Path) -> str | None:
    """``None`` when ``p`` is a bundle folder written by ``bundle`` (a bundle card, and only bundle files),
    else the reason it is not."""
    entries = sorted(p.iterdir())
    foreign = [
        x.name for x in entries if x.name not in (*BUNDLE_FILES, CARD, MANIFEST) or not x.is_file() or x.is_symlink()
    ]
    if foreign:
        return (
            f"it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} a bundle does not have: {foreign[:5]}"
        )
    try:
        card = json.loads((p / CARD).read_bytes()) if (p / CARD).stat().st_size <= MAX_CARD_BYTES else None
    except (OSError, ValueError, RecursionError):
        card = None
    meta = card.get("bundle") if isinstance(card, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"it has no {CARD} of format {FORMAT!r}"
    return None


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that exists and holds anything, unless it is a bundle and ``overwrite`` is set."""
    if not out.exists() and not out.is_symlink():
        return
    target = out.resolve()
    if not target.is_dir():
        raise FileExistsError(f"`out_dir` {str(out)!r} exists and is not a folder; refusing to replace it")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"`out_dir` {str(out)!r} exists and is not empty; pass overwrite=True to replace a "
            "bundle written there before"
        )
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise FileExistsError(f"`out_dir` {str(out)!r} is the current directory or holds it; refusing to replace it")
    reason = _is_bundle_folder(target)
    if reason is not None:
        raise FileExistsError(
            f"`out_dir` {str(out)!r} is not a bundle folder ({reason}); overwrite=True only "
            "replaces a bundle, so nothing was deleted"
        )


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; ``False`` where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``: a rename when ``target`` is absent or empty, else an atomic
    exchange (two renames with a roll-back where the platform has no exchange), then the old bundle is deleted."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(new, target)  # rename(2) replaces an empty folder atomically
        return
    if _rename_exchange(new, target):  # target now holds the new bundle, `new` the old one
        shutil.rmtree(new, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_models(model: nn.Module, x: torch.Tensor, d: Path, int8: Any, ref: np.ndarray | None) -> list[str]:
    export(model, x, d / FLOAT_ONNX, "onnx")
    import lightning as L

    if isinstance(model, L.LightningModule):  # Lightning's own tracer keeps the Trainer-less module traceable
        torch.jit.save(model.to_torchscript(method="trace", example_inputs=x), str(d / TORCHSCRIPT))
    else:
        export(model, x, d / TORCHSCRIPT, "torchscript")
    files = [FLOAT_ONNX, TORCHSCRIPT]
    if int8 is True:
        assert ref is not None  # bundle() requires reference_data for int8=True
        _calibrated_int8(d / FLOAT_ONNX, d / INT8_ONNX, ref[:512])
        files.append(INT8_ONNX)
    elif isinstance(int8, bytes):
        (d / INT8_ONNX).write_bytes(int8)
        files.append(INT8_ONNX)
    elif isinstance(int8, (str, Path)):
        src = Path(int8)
        if not src.is_file():
            raise FileNotFoundError(f"`int8` path {str(src)!r} does not exist")
        shutil.copyfile(src, d / INT8_ONNX)
        files.append(INT8_ONNX)
    return files


def _check_outputs(d: Path, files: list[str], x: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """Compare every runtime with torch on ``x``; float runtimes must match within FLOAT_ATOL/RTOL."""
    got = {FLOAT_ONNX: _run_onnx(d / FLOAT_ONNX, x)}
    ts = torch.jit.load(str(d / TORCHSCRIPT))
    with torch.no_grad():
        got[TORCHSCRIPT] = ts(torch.from_numpy(x)).float().numpy()
    checks: dict[str, Any] = {"n_samples": int(len(x)), "float_atol": FLOAT_ATOL, "float_rtol": FLOAT_RTOL}
    for f, y in got.items():
        if y.shape != want.shape or not np.allclose(y, want, atol=FLOAT_ATOL, rtol=FLOAT_RTOL):
            diff = float(np.abs(y - want).max()) if y.shape == want.shape else float("nan")
            raise RuntimeError(
                f"bundle: {f} does not reproduce the torch model (max |diff| {diff:.3g}, shape "
                f"{y.shape} vs {want.shape}); the model may be data-dependent and not traceable"
            )
        checks[f] = {"max_abs_diff": float(np.abs(y - want).max())}
    if INT8_ONNX in files:
        try:
            y = _run_onnx(d / INT8_ONNX, x)
        except Exception as exc:
            raise ValueError(f"bundle: the int8 model cannot run on the example input: {exc}") from exc
        if y.shape != want.shape:
            raise ValueError(f"bundle: the int8 model outputs {y.shape}, the float model {want.shape}")
        checks[INT8_ONNX] = {
            "max_abs_diff": float(np.abs(y - want).max()),
            "top1_agreement": float((y.argmax(1) == want.argmax(1)).mean()),
        }
    return checks


def _measurements(model: nn.Module, x: torch.Tensor, d: Path, files: list[str]) -> dict[str, Any]:
    from lightning_nas.deploy.measure import measure

    m = measure(model, x, repeats=20, warmup=3, onnx=False).to_dict()
    xn = x.detach().cpu().numpy().astype(np.float32)
    m["onnx_latency_ms"] = _onnx_latency_ms(d / FLOAT_ONNX, xn)
    m["file_bytes"] = {f: (d / f).stat().st_size for f in files}  # trusted-path: our own file names
    if INT8_ONNX in files:
        m["int8_onnx_latency_ms"] = _onnx_latency_ms(d / INT8_ONNX, xn)
    return m


@dataclass
class Bundle:
    """A loaded, verified bundle. ``session()`` gives an ONNX Runtime session, ``torchscript()`` the module,
    ``profile()`` the reference profile: all made from the bytes whose sha256 ``load_bundle`` checked."""

    path: Path
    card: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)
    _profile: ReferenceProfile | None = field(default=None, repr=False)

    @property
    def files(self) -> dict[str, Any]:
        return self.card["bundle"]["files"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.card["input_spec"]["shape"][1:])

    @property
    def output_kind(self) -> str:
        return self.card["bundle"]["output"]["kind"]

    @property
    def num_classes(self) -> int:
        return int(self.card["bundle"]["output"]["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.card["bundle"]["output"].get("class_names") or [str(i) for i in range(self.num_classes)])

    @property
    def has_int8(self) -> bool:
        return INT8_ONNX in self.files

    def data(self, name: str) -> bytes:
        """The verified bytes of the bundle file ``name`` (read and checked against the card now if this
        ``Bundle`` was not made by ``load_bundle``)."""
        if name not in self.files:
            raise BundleError(f"bundle {str(self.path)!r} has no {name}")
        if name not in self.blobs:
            data = _read_checked(self.path, name, self.files[name].get("sha256"), None)
            self.blobs[name] = data
        return self.blobs[name]

    def session(self, int8: bool = False, threads: int | None = None) -> Any:
        if int8 and not self.has_int8:
            raise BundleError(f"bundle {str(self.path)!r} has no int8 model ({INT8_ONNX})")
        return onnx_session(self.data(INT8_ONNX if int8 else FLOAT_ONNX), threads=threads)

    def torchscript(self) -> torch.jit.ScriptModule:
        return torch.jit.load(io.BytesIO(self.data(TORCHSCRIPT)), map_location="cpu").eval()

    def profile(self) -> ReferenceProfile | None:
        if PROFILE not in self.files:
            return None
        if self._profile is None:
            self._profile = _parse_profile(self, self.data(PROFILE))
        return self._profile


def _read_checked(p: Path, name: str, digest: Any, manifest: dict[str, str] | None) -> bytes:
    """The bytes of bundle file ``name``, read once, checked against the card's (and manifest's) sha256."""
    try:
        path = inside(p, name, "bundle file")
    except UnsafePathError as exc:
        raise BundleError(f"bundle {str(p)!r}: {exc}") from None
    if not path.is_file():
        raise BundleError(f"bundle {str(p)!r} is missing {name}, which its card lists")
    data = path.read_bytes()
    actual = _sha256_bytes(data)
    if actual != digest or (manifest is not None and manifest.get(name) != digest):
        recorded = str(manifest.get(name)) if manifest is not None else "-"
        raise BundleError(
            f"bundle file {name} in {str(p)!r} does not match its recorded sha256 (card "
            f"{str(digest)[:12]}..., manifest {recorded[:12]}..., file {actual[:12]}...): "
            "it was modified or replaced; refusing to load it"
        )
    return data


def _parse_profile(b: Bundle, data: bytes) -> ReferenceProfile:
    try:
        prof = ReferenceProfile(json.loads(data))
    except RecursionError:
        raise BundleError(f"bundle {str(b.path)!r}: {PROFILE} is nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(
            f"bundle {str(b.path)!r}: {PROFILE} is not a valid reference profile: "
            f"{(str(exc).splitlines() or [''])[0][:200]}"
        ) from None
    if prof.input_shape != b.input_shape:
        raise BundleError(
            f"bundle {str(b.path)!r}: {PROFILE} is for inputs of shape {list(prof.input_shape)}, the "
            f"card says {list(b.input_shape)}"
        )
    if prof.num_classes != b.num_classes:
        raise BundleError(f"bundle {str(b.path)!r}: {PROFILE} has {prof.num_classes} classes, the card {b.num_classes}")
    return prof


def _read_small(p: Path, name: str) -> bytes:
    try:
        path = inside(p, name)
    except UnsafePathError as exc:
        raise BundleError(f"bundle {str(p)!r}: {exc}") from None
    if not path.is_file():
        raise BundleError(
            f"{str(p)!r} is not a bundle: it has no {name}"
            + (" (write one with lightning_nas.deploy.bundle)" if name == CARD else "")
        )
    if path.stat().st_size > MAX_CARD_BYTES:
        raise BundleError(f"bundle {str(p)!r}: {name} is larger than {MAX_CARD_BYTES} bytes")
    return path.read_bytes()


def load_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle: the card parses and matches the bundle-card schema, names only bundle files,
    and every file matches its sha256 in the card and manifest; the reference profile is valid and agrees
    with the card. The returned ``Bundle`` keeps the verified bytes and never reads the files again.

    Raises ``BundleError`` (one line) when a folder is not a bundle, its card is malformed, or a file is
    missing, was changed, or lies outside the folder.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from lightning_nas.deploy import BundleError, bundle, load_bundle
        >>> from lightning_nas.models import DigitsCNN
        >>> path = bundle(DigitsCNN(width=8).eval(), torch.rand(4, 1, 8, 8), os.path.join(tempfile.mkdtemp(), "b"),
        ...               reference_data=torch.rand(64, 1, 8, 8))
        >>> session = load_bundle(path).session()  # made from the verified bytes
        >>> session.run(None, {session.get_inputs()[0].name: torch.rand(2, 1, 8, 8).numpy()})[0].shape
        (2, 10)
        >>> with open(path / "model.onnx", "ab") as f:  # a changed file
        ...     _ = f.write(b"x")
        >>> load_bundle(path)
        Traceback (most recent call last):
        ...
        lightning_nas.deploy.bundle.BundleError: ...
    """
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{str(p)!r} is not a bundle: not a folder")
    card_bytes = _read_small(p, CARD)
    try:
        card = json.loads(card_bytes)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{str(p / CARD)!r} is not valid JSON: {str(exc)[:200] or 'nested too deeply'}") from None
    meta = card.get("bundle") if isinstance(card, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{str(p)!r} is not a bundle: {CARD} has no 'bundle' section of format {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise BundleError(
            f"bundle {str(p)!r} has version {str(meta.get('version'))[:20]!r}; this lightning_nas reads {VERSION}"
        )
    validate_card(card, str(p / CARD))
    manifest = _read_manifest(p)
    blobs = {f: _read_checked(p, f, info["sha256"], manifest) for f, info in meta["files"].items()}
    if manifest.get(CARD) != _sha256_bytes(card_bytes):
        raise BundleError(
            f"{CARD} in {str(p)!r} does not match the sha256 in {MANIFEST}: the card was edited; refusing to load it"
        )
    b = Bundle(p, card, blobs)
    b.profile()  # parsed and checked now: a bad profile is refused at load, not at the first /drift
    return b


def _read_manifest(p: Path) -> dict[str, str]:
    try:
        text = _read_small(p, MANIFEST).decode("utf-8")
    except BundleError as exc:
        if "it has no" in str(exc):
            raise BundleError(f"bundle {str(p)!r} is missing {MANIFEST}") from None
        raise
    except UnicodeDecodeError:
        raise BundleError(f"bundle {str(p)!r}: {MANIFEST} is not text") from None
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


__all__ = ["Bundle", "BundleError", "bundle", "load_bundle", "sha256", "validate_card"]
