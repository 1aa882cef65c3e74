"""A deployable bundle: one self-describing folder with the model in every runtime format and its card.

::

    bundle/
      model.onnx         float ONNX (dynamic batch)
      model.int8.onnx    int8 QDQ ONNX (when ``int8`` is given)
      model.ts           TorchScript (traced)
      profile.json       reference profile of the training/validation data (when ``reference_data`` is given)
      card.json          the model card + ``bundle`` section: format, input/output spec, sha256 of each file
      bundle.sha256      ``sha256sum -c`` manifest of every file above, card included

``load_bundle`` recomputes every hash and refuses a folder whose files were modified, replaced or removed.
``bundle`` builds into a temporary folder beside ``out_dir`` and swaps it in at the end; ``overwrite=True`` only
ever replaces a folder that is a bundle.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_nas._validate import check_type
from lightning_nas.deploy.card import ModelCard, _jsonable
from lightning_nas.deploy.export import export, onnx_session
from lightning_nas.deploy.profile import ReferenceProfile

FORMAT = "lightning_nas.bundle"
VERSION = 1
CARD, MANIFEST = "card.json", "bundle.sha256"
FLOAT_ONNX, INT8_ONNX, TORCHSCRIPT, PROFILE = "model.onnx", "model.int8.onnx", "model.ts", "profile.json"
OUTPUT_KINDS = ("auto", "logits", "probabilities")
#: every file a bundle folder may hold
BUNDLE_FILES = (FLOAT_ONNX, INT8_ONNX, TORCHSCRIPT, PROFILE)
#: largest card/manifest read
MAX_CARD_BYTES = 16 << 20
#: ONNX / TorchScript outputs must match torch within ``atol + rtol * |torch|`` (float32 kernels differ).
FLOAT_ATOL, FLOAT_RTOL = 1e-4, 1e-3


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleError(ValueError):
    """A folder that is not a valid bundle, or one whose files do not match their recorded hashes."""


def _calibrated_int8(float_path: Path, out_path: Path, data: np.ndarray, batch: int = 32) -> None:
    """Static int8 QDQ quantization with ONNX Runtime, calibrated on ``data`` (MinMax ranges)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": data[i:i + batch]} for i in range(0, len(data), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name("pre-quant.onnx")
    try:  # shape inference + graph optimisation first, as ONNX Runtime recommends; plain float graph if it fails
        quant_pre_process(str(float_path), str(pre))
    except Exception:  # noqa: BLE001
        shutil.copyfile(float_path, pre)
    quantize_static(str(pre), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    pre.unlink()


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = onnx_session(path, threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _onnx_latency_ms(path: Path, x: np.ndarray, repeats: int = 30) -> float:
    from lightning_nas.deploy.measure import _time

    sess = onnx_session(path, threads=1)
    feeds = {sess.get_inputs()[0].name: x}
    return round(_time(lambda: sess.run(None, feeds), repeats, 5)[0], 4)


def bundle(model: nn.Module, example_input: torch.Tensor, out_dir: str | Path, *,
           int8: bool | bytes | str | Path | None = None, metrics: dict[str, Any] | None = None,
           card: ModelCard | None = None, reference_data: torch.Tensor | np.ndarray | None = None,
           name: str | None = None, normalisation: str | None = None, output: str = "auto",
           class_names: list[str] | None = None, overwrite: bool = False) -> Path:
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
    """
    check_type("model", model, nn.Module)
    check_type("example_input", example_input, torch.Tensor)
    check_type("int8", int8, (bool, bytes, str, Path), allow_none=True)
    check_type("metrics", metrics, dict, allow_none=True)
    check_type("card", card, ModelCard, allow_none=True)
    if output not in OUTPUT_KINDS:
        raise ValueError(f"`output` must be one of {list(OUTPUT_KINDS)}, got {output!r}")
    if example_input.ndim < 2 or not example_input.is_floating_point():
        raise ValueError(f"`example_input` must be a float batch (B, ...), got {example_input.dtype} "
                         f"{tuple(example_input.shape)}")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    shape = tuple(int(s) for s in example_input.shape[1:])
    ref = None
    if reference_data is not None:
        ref = (reference_data.detach().cpu().numpy() if isinstance(reference_data, torch.Tensor)
               else np.asarray(reference_data)).astype(np.float32)
        if len(ref) < 20:
            raise ValueError(f"`reference_data` must hold at least 20 inputs for a reference profile, got {len(ref)}")
        if tuple(ref.shape[1:]) != shape:
            raise ValueError(f"`reference_data` samples have shape {tuple(ref.shape[1:])}, example_input {shape}")
    if int8 is True and ref is None:
        raise ValueError("`int8=True` calibrates the int8 model on `reference_data`; pass reference_data")
    was_training = model.training
    model.eval()
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
        kind = output
        if kind == "auto":
            is_dist = (want >= 0).all() and np.allclose(want.sum(1), 1.0, atol=1e-4)
            kind = "probabilities" if is_dist else "logits"
        if ref is not None:
            ReferenceProfile.from_data(model, ref).save(tmpd / PROFILE)
            files.append(PROFILE)
        c = card or ModelCard(name or type(model).__name__)
        c.set_model(model)
        c.metrics.update(metrics or {})
        c.measurements = _measurements(model, example_input, tmpd, files)
        rng = (float(ref.min()), float(ref.max())) if ref is not None else None
        c.input_spec = {"name": "input", "dtype": "float32", "shape": ["batch", *shape],
                        "normalisation": normalisation or c.input_spec.get("normalisation"),
                        "range": list(rng) if rng else c.input_spec.get("range")}
        k = want.shape[1]
        names = [str(n) for n in (class_names or range(k))]
        if len(names) != k:
            raise ValueError(f"`class_names` has {len(names)} names for {k} model outputs")
        d = c.to_dict()
        d["name"] = name or c.name
        d["bundle"] = {"format": FORMAT, "version": VERSION, "output": {"kind": kind, "num_classes": k,
                                                                         "class_names": names},
                       "checks": checks, "files": {f: {"sha256": sha256(tmpd / f),
                                                       "bytes": (tmpd / f).stat().st_size} for f in files}}
        (tmpd / CARD).write_text(json.dumps(_jsonable(d), indent=2))
        (tmpd / MANIFEST).write_text("".join(f"{sha256(tmpd / f)}  {f}\n" for f in [*files, CARD]))
        leftovers = sorted(x.name for x in tmpd.iterdir() if x.name not in (*files, CARD, MANIFEST))
        for x in leftovers:
            (tmpd / x).unlink()
        _check_out_dir(out, overwrite)  # again: the folder may have changed while the bundle was built
        _swap_in(tmpd, target)
    except BaseException:
        shutil.rmtree(tmpd, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return out


def _is_bundle_folder(p: Path) -> str | None:
    """``None`` when ``p`` is a bundle folder written by ``bundle`` (a bundle card, and only bundle files),
    else the reason it is not."""
    names = sorted(x.name for x in p.iterdir())
    foreign = [n for n in names if n not in (*BUNDLE_FILES, CARD, MANIFEST) or not (p / n).is_file()
               or (p / n).is_symlink()]
    if foreign:
        return f"it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} a bundle does not have: {foreign[:5]}"
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
        raise FileExistsError(f"`out_dir` {str(out)!r} exists and is not empty; pass overwrite=True to replace a "
                              "bundle written there before")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise FileExistsError(f"`out_dir` {str(out)!r} is the current directory or holds it; refusing to replace it")
    reason = _is_bundle_folder(target)
    if reason is not None:
        raise FileExistsError(f"`out_dir` {str(out)!r} is not a bundle folder ({reason}); overwrite=True only "
                              "replaces a bundle, so nothing was deleted")


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
            raise RuntimeError(f"bundle: {f} does not reproduce the torch model (max |diff| {diff:.3g}, shape "
                               f"{y.shape} vs {want.shape}); the model may be data-dependent and not traceable")
        checks[f] = {"max_abs_diff": float(np.abs(y - want).max())}
    if INT8_ONNX in files:
        try:
            y = _run_onnx(d / INT8_ONNX, x)
        except Exception as exc:  # noqa: BLE001 - a broken int8 model is a user error to report clearly
            raise ValueError(f"bundle: the int8 model cannot run on the example input: {exc}") from exc
        if y.shape != want.shape:
            raise ValueError(f"bundle: the int8 model outputs {y.shape}, the float model {want.shape}")
        checks[INT8_ONNX] = {"max_abs_diff": float(np.abs(y - want).max()),
                             "top1_agreement": float((y.argmax(1) == want.argmax(1)).mean())}
    return checks


def _measurements(model: nn.Module, x: torch.Tensor, d: Path, files: list[str]) -> dict[str, Any]:
    from lightning_nas.deploy.measure import measure

    m = measure(model, x, repeats=20, warmup=3, onnx=False).to_dict()
    xn = x.detach().cpu().numpy().astype(np.float32)
    m["onnx_latency_ms"] = _onnx_latency_ms(d / FLOAT_ONNX, xn)
    m["file_bytes"] = {f: (d / f).stat().st_size for f in files}
    if INT8_ONNX in files:
        m["int8_onnx_latency_ms"] = _onnx_latency_ms(d / INT8_ONNX, xn)
    return m


@dataclass
class Bundle:
    """A loaded, verified bundle. ``session()`` gives an ONNX Runtime session, ``torchscript()`` the module."""

    path: Path
    card: dict[str, Any]

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
    def has_int8(self) -> bool:
        return INT8_ONNX in self.files

    def session(self, int8: bool = False, threads: int | None = None) -> Any:
        if int8 and not self.has_int8:
            raise BundleError(f"bundle {str(self.path)!r} has no int8 model ({INT8_ONNX})")
        return onnx_session(self.path / (INT8_ONNX if int8 else FLOAT_ONNX), threads=threads)

    def torchscript(self) -> torch.jit.ScriptModule:
        return torch.jit.load(str(self.path / TORCHSCRIPT)).eval()

    def profile(self) -> ReferenceProfile | None:
        return ReferenceProfile.load(self.path / PROFILE) if PROFILE in self.files else None


def load_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle: the card parses, and every file matches its sha256 in the card and manifest.

    Raises ``BundleError`` naming the file when a folder is not a bundle, or a file is missing or was changed.
    """
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{str(p)!r} is not a bundle: not a folder")
    if not (p / CARD).is_file():
        raise BundleError(f"{str(p)!r} is not a bundle: it has no {CARD} (write one with lightning_nas.deploy.bundle)")
    try:
        card = json.loads((p / CARD).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{str(p / CARD)!r} is not valid JSON: {exc}") from exc
    meta = card.get("bundle") if isinstance(card, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{str(p)!r} is not a bundle: {CARD} has no 'bundle' section of format {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise BundleError(f"bundle {str(p)!r} has version {meta.get('version')!r}; this lightning_nas reads {VERSION}")
    for key in ("files", "output"):
        if key not in meta:
            raise BundleError(f"bundle card {str(p / CARD)!r} lacks bundle.{key}")
    if FLOAT_ONNX not in meta["files"]:
        raise BundleError(f"bundle card {str(p / CARD)!r} lists no {FLOAT_ONNX}")
    recorded = {f: info.get("sha256") for f, info in meta["files"].items()}
    manifest = _read_manifest(p)
    for f, digest in recorded.items():
        if not (p / f).is_file():
            raise BundleError(f"bundle {str(p)!r} is missing {f}, which its card lists")
        actual = sha256(p / f)
        if actual != digest or manifest.get(f) != digest:
            raise BundleError(f"bundle file {f} in {str(p)!r} does not match its recorded sha256 (card "
                              f"{str(digest)[:12]}..., manifest {str(manifest.get(f))[:12]}..., "
                              f"file {actual[:12]}...): "
                              "it was modified or replaced; refusing to load it")
    if manifest.get(CARD) != sha256(p / CARD):
        raise BundleError(f"{CARD} in {str(p)!r} does not match the sha256 in {MANIFEST}: the card was edited; "
                          "refusing to load it")
    if "input_spec" not in card or "shape" not in card["input_spec"]:
        raise BundleError(f"bundle card {str(p / CARD)!r} has no input_spec.shape")
    return Bundle(p, card)


def _read_manifest(p: Path) -> dict[str, str]:
    if not (p / MANIFEST).is_file():
        raise BundleError(f"bundle {str(p)!r} is missing {MANIFEST}")
    out = {}
    for line in (p / MANIFEST).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


__all__ = ["Bundle", "BundleError", "bundle", "load_bundle", "sha256"]
