"""Serve a bundle over HTTP on ONNX Runtime (FastAPI + uvicorn), with drift checks over recent requests.

Endpoints:

``POST /predict``  body ``{"inputs": [x1, x2, ...]}`` (each ``x`` nested lists of the card's input shape)
                   -> ``{"classes": [...], "labels": [...], "probabilities": [[...], ...], "model": "float"}``
``GET /health``    -> ``{"status": "ok", ...}``
``GET /card``      -> the model card
``GET /drift``     -> the drift report (``deploy.check_drift``) of the last ``window`` served inputs against
                   the bundle's reference profile, attributions from the bundle's TorchScript model

Every malformed request is answered 4xx with a one-line message (400 non-JSON, 413 body or batch too large,
415 a Content-Type other than ``application/json``, 422 wrong structure/shape/dtype, NaN/inf or values beyond
float32, or inputs for which the model's output is not finite), never a 500. A rejected request enters nothing
into the drift window. The OpenAPI schema (``/openapi.json``) documents the request body and every response.
"""

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from lightning_nas._validate import check_int, check_type
from lightning_nas.deploy.bundle import Bundle, load_bundle
from lightning_nas.deploy.drift import DriftThresholds, check_drift


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


_JSON_TYPES = {bool: "booleans", str: "strings", dict: "objects", type(None): "nulls", list: "lists"}
_JSON_TYPE = {
    bool: "a boolean",
    str: "a string",
    dict: "an object",
    type(None): "null",
    int: "a number",
    float: "a number",
}


def _at(index: Any) -> str:
    return "inputs" + "".join(f"[{int(i)}]" for i in index)


def parse_inputs(obj: Any, shape: tuple[int, ...], max_batch: int) -> np.ndarray:
    """Validate a decoded JSON body against the input spec; return a float32 batch or raise ``_BadRequest``.

    Accepted: ``{"inputs": [x1, ...]}``, 1 to ``max_batch`` inputs, each nested lists of JSON numbers of the card's
    per-input ``shape`` whose values are finite in float32. Anything else raises ``_BadRequest`` (413 for too
    many inputs, 422 otherwise) with one line naming the first offending position (``inputs[i][j]...``).

    Examples:
        >>> from lightning_nas.deploy.serve import parse_inputs
        >>> parse_inputs({"inputs": [[0.0, 1.0], [2.0, 3.0]]}, shape=(2,), max_batch=8).shape
        (2, 2)
        >>> parse_inputs({"inputs": [[0.0, "a"]]}, shape=(2,), max_batch=8)
        Traceback (most recent call last):
        ...
        lightning_nas.deploy.serve._BadRequest: ...
    """
    if not isinstance(obj, dict) or "inputs" not in obj:
        raise _BadRequest(422, 'the body must be a JSON object {"inputs": [...]} holding a batch of inputs')
    inputs = obj["inputs"]
    if not isinstance(inputs, list) or not inputs:
        got = "an empty list" if isinstance(inputs, list) else _JSON_TYPE.get(type(inputs), "a number")
        raise _BadRequest(422, f'"inputs" must be a non-empty list (a batch), got {got}')
    if len(inputs) > max_batch:
        raise _BadRequest(413, f"batch of {len(inputs)} inputs exceeds the maximum batch size {max_batch}")
    want = (len(inputs), *shape)
    try:  # object cells: numpy never converts here, so every JSON value keeps its Python type
        cells = np.array(inputs, dtype=object)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _BadRequest(
            422, f"inputs are ragged: every input must have shape {list(shape)} ({str(exc)[:120]})"
        ) from None
    flat = cells.ravel().tolist()
    types = set(map(type, flat))
    if list in types:  # numpy stopped where sibling lists differ in length (or nesting beyond 64 levels)
        first = next(i for i, v in enumerate(flat) if type(v) is list)
        raise _BadRequest(
            422,
            f"inputs are ragged: every input must have shape {list(shape)}; nested lists of "
            f"different lengths at {_at(np.unravel_index(first, cells.shape))}",
        )
    if cells.shape != want:
        raise _BadRequest(
            422, f"each input must have shape {list(shape)} (the card's input_spec), got {list(cells.shape[1:])}"
        )
    if not types <= {int, float}:
        first = next(i for i, v in enumerate(flat) if type(v) not in (int, float))
        what = _JSON_TYPES.get(type(flat[first]), type(flat[first]).__name__)
        raise _BadRequest(
            422,
            f"inputs must be numbers (the card's dtype is float32), got {what} at {_at(np.unravel_index(first, want))}",
        )
    try:
        x64 = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        first = next((i for i, v in enumerate(flat) if type(v) is int and abs(v) > 2**1000), 0)
        raise _BadRequest(
            422, f"inputs hold an integer beyond float32 range at {_at(np.unravel_index(first, want))}"
        ) from None
    with np.errstate(over="ignore", invalid="ignore"):
        x = x64.astype(np.float32).reshape(want)
    bad = ~np.isfinite(x)
    if bad.any():
        raise _BadRequest(
            422,
            f"inputs hold {int(bad.sum())} NaN/inf value(s) (or values beyond float32 range); "
            f"first at {_at(np.argwhere(bad)[0])}",
        )
    return x


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class _Window:
    """The last ``size`` served inputs and predicted classes (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.inputs: deque = deque(maxlen=size)
        self.classes: deque = deque(maxlen=size)
        self.lock = threading.Lock()

    def add(self, x: np.ndarray, classes: np.ndarray) -> None:
        with self.lock:
            self.inputs.extend(x)
            self.classes.extend(classes.tolist())

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return np.array(self.inputs), np.array(self.classes, dtype=np.int64)


def _nested_array(shape: tuple[int, ...]) -> dict[str, Any]:
    """JSON schema of one input: nested arrays of ``shape`` of numbers within float32's range."""
    f32 = float(np.finfo(np.float32).max)
    item: dict[str, Any] = {"type": "number", "minimum": -f32, "maximum": f32}
    for n in reversed(shape):
        item = {"type": "array", "items": item, "minItems": n, "maxItems": n}
    return item


def _openapi_models() -> dict[str, Any]:
    from pydantic import BaseModel, ConfigDict

    class Error(BaseModel):
        """Every 4xx (and the last-resort 500): one line saying what was wrong."""

        model_config = ConfigDict(extra="forbid")
        error: str
        status: int

    class Prediction(BaseModel):
        model_config = ConfigDict(extra="forbid")
        classes: list[int]
        labels: list[str]
        probabilities: list[list[float]]
        model: str

    class Health(BaseModel):
        status: str
        model: str
        name: str | None
        input_shape: list[int]
        max_batch: int
        window: int
        drift_profile: bool

    class Drift(BaseModel):
        status: str
        n_samples: int
        verdict: str

    return {"Error": Error, "Prediction": Prediction, "Health": Health, "Drift": Drift}


def create_app(
    bundle: str | Path | Bundle,
    *,
    int8: bool = False,
    max_batch: int = 256,
    max_body_bytes: int | None = None,
    window: int = 512,
    thresholds: Any = None,
    attribution_samples: int = 64,
    threads: int | None = 1,
) -> Any:
    """A FastAPI app serving ``bundle`` (a path or a loaded ``Bundle``) on ONNX Runtime.

    Args:
        int8: serve the bundle's int8 model instead of the float one.
        max_batch: largest batch one request may send.
        max_body_bytes: largest request body (default: room for ``max_batch`` inputs, >= 64 KiB).
        window: served inputs kept for ``GET /drift``.
        thresholds: ``DriftThresholds`` or a dict of its fields.
        attribution_samples: most recent inputs attributed (Integrated Gradients) per drift check (0: none).
        threads: ONNX Runtime intra-op threads.

    Raises ``BundleError`` when the model does not accept the card's input shape or does not output
    ``(N, num_classes)`` scores (checked once on a zero input).

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from fastapi.testclient import TestClient
        >>> from lightning_nas.deploy import bundle
        >>> from lightning_nas.deploy.serve import create_app
        >>> from lightning_nas.models import DigitsCNN
        >>> path = bundle(DigitsCNN(width=8).eval(), torch.rand(4, 1, 8, 8), os.path.join(tempfile.mkdtemp(), "b"),
        ...               reference_data=torch.rand(64, 1, 8, 8))
        >>> client = TestClient(create_app(path, attribution_samples=0))
        >>> response = client.post("/predict", json={"inputs": torch.rand(2, 1, 8, 8).tolist()})
        >>> response.status_code, len(response.json()["classes"])
        (200, 2)
        >>> client.post("/predict", json={"inputs": [[1, 2]]}).status_code  # the wrong shape: 422, never a 500
        422
    """
    from lightning_nas._optional import require

    require("fastapi", extra="serve", feature="deploy.serve.create_app")
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    check_type("int8", int8, bool)
    check_int("max_batch", max_batch, 1, 1_000_000)
    check_int("window", window, 2)
    check_int("attribution_samples", attribution_samples, 0)
    numel = int(np.prod(b.input_shape))
    if max_body_bytes is None:
        max_body_bytes = max(64 * 1024, 32 * max_batch * numel + 1024)
    check_int("max_body_bytes", max_body_bytes, 16)
    svc = _Service(b, int8, max_batch, window, DriftThresholds.coerce(thresholds), attribution_samples, threads)
    m = _openapi_models()
    app = FastAPI(title=f"lightning_nas: {b.card.get('name', 'model')}", docs_url=None, redoc_url=None)
    app.state.bundle, app.state.window = b, svc.window
    app.state.max_batch, app.state.max_body_bytes = max_batch, max_body_bytes
    err = {"model": m["Error"]}

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # last resort: a message, not a trace
        return _error(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    body_schema = {
        "type": "object",
        "required": ["inputs"],  # other keys are ignored
        "properties": {
            "inputs": {"type": "array", "minItems": 1, "maxItems": max_batch, "items": _nested_array(b.input_shape)}
        },
    }

    @app.post(
        "/predict",
        response_model=m["Prediction"],
        responses={400: err, 413: err, 415: err, 422: err, 500: err},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}},
    )
    async def predict(request: Request) -> JSONResponse:
        try:
            ctype = request.headers.get("content-type", "")
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                raise _BadRequest(415, f"Content-Type must be application/json, got {ctype[:60]!r}")
            return JSONResponse(svc.predict(await _read_body(request, max_body_bytes)))
        except _BadRequest as exc:
            return _error(exc.status, exc.message)
        except Exception as exc:
            return _error(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    @app.get("/health", response_model=m["Health"])
    def health() -> dict[str, Any]:
        return svc.health()

    @app.get("/card", response_model=dict[str, Any])
    def card() -> dict[str, Any]:
        return b.card

    @app.get("/drift", response_model=m["Drift"], responses={404: err, 500: err})
    async def drift() -> JSONResponse:
        if svc.profile is None:
            return _error(
                404, "this bundle has no reference profile (bundle(..., reference_data=...)); drift cannot be checked"
            )
        try:
            return JSONResponse(await run_in_threadpool(svc.drift))
        except Exception as exc:
            return _error(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    return app


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_body(request: Any, max_body_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _BadRequest(400, f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > max_body_bytes:
            raise _BadRequest(413, f"request body of {declared} bytes exceeds the limit of {max_body_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise _BadRequest(413, f"request body exceeds the limit of {max_body_bytes} bytes")
    return bytes(body)


class _Service:
    """What the routes of ``create_app`` do, without HTTP: the ONNX Runtime session, the window of served inputs
    and the drift check against the bundle's reference profile."""

    def __init__(
        self,
        b: Bundle,
        int8: bool,
        max_batch: int,
        window: int,
        thresholds: DriftThresholds,
        attribution_samples: int,
        threads: int | None,
    ) -> None:
        self.b, self.max_batch, self.thresholds = b, max_batch, thresholds
        self.attribution_samples = attribution_samples
        self.sess = b.session(int8=int8, threads=threads)
        self.in_name = self.sess.get_inputs()[0].name
        _check_model_matches_card(b, self.sess, self.in_name)
        self.profile = b.profile()
        self.window = _Window(window)
        self.model_name = "int8" if int8 else "float"
        self._ts_model: Any = None  # TorchScript model for attributions, loaded on the first drift check

    def predict(self, body: bytes) -> dict[str, Any]:
        """Scores of the JSON body's inputs; ``_BadRequest`` for bad JSON or shapes and for non-finite outputs."""
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise _BadRequest(400, f"the body is not valid JSON: {str(exc)[:200]}") from exc
        x = parse_inputs(obj, self.b.input_shape, self.max_batch)
        scores = np.asarray(self.sess.run(None, {self.in_name: x})[0], dtype=np.float64)
        with np.errstate(all="ignore"):
            probs = _softmax(scores) if self.b.output_kind == "logits" else scores
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():  # e.g. inputs near float32's limit overflow inside the model: never served, never in /drift
            rows = np.flatnonzero(bad).tolist()
            raise _BadRequest(
                422,
                f"the model's output is not finite (NaN/inf) for input(s) {rows[:10]}"
                f"{' ...' if len(rows) > 10 else ''} of {len(x)}: values this large "
                f"(|x| up to {float(np.abs(x).max()):.3g}) overflow inside the model; "
                "nothing from this request was served or added to the drift window",
            )
        classes = probs.argmax(1)
        self.window.add(x, classes)
        labels = self.b.class_names
        return {
            "classes": classes.tolist(),
            "labels": [labels[c] for c in classes],
            "probabilities": np.round(probs, 6).tolist(),
            "model": self.model_name,
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model_name,
            "name": self.b.card.get("name"),
            "input_shape": list(self.b.input_shape),
            "max_batch": self.max_batch,
            "window": len(self.window.inputs),
            "drift_profile": self.profile is not None,
        }

    def drift(self) -> dict[str, Any]:
        assert self.profile is not None  # the /drift route answers 404 without one
        x, classes = self.window.snapshot()
        t = self.thresholds
        if len(x) < t.min_samples:
            return {
                "status": "insufficient",
                "n_samples": int(len(x)),
                "verdict": f"{len(x)} inputs served in the window; at least {t.min_samples} are needed",
            }
        share = None
        if self.attribution_samples and self.profile.data.get("attribution") is not None:
            from lightning_nas.deploy.profile import attribution_share

            if self._ts_model is None:
                self._ts_model = self.b.torchscript()
            share = attribution_share(self._ts_model, x[-self.attribution_samples :], self.profile.feature_mode)
        return check_drift(self.profile, x, classes, share, t).to_dict()


def _check_model_matches_card(b: Bundle, sess: Any, in_name: str) -> None:
    """The ONNX model takes the card's input shape and outputs ``(N, num_classes)``: checked on one zero input."""
    from lightning_nas.deploy.bundle import BundleError

    try:
        y = sess.run(None, {in_name: np.zeros((1, *b.input_shape), np.float32)})[0]
    except Exception as exc:
        raise BundleError(
            f"bundle {str(b.path)!r}: the model does not accept the card's input shape "
            f"{list(b.input_shape)}: {(str(exc).splitlines() or [''])[0][:200]}"
        ) from None
    if np.shape(y) != (1, b.num_classes):
        raise BundleError(
            f"bundle {str(b.path)!r}: the model outputs shape {list(np.shape(y))} for one input, "
            f"the card says (N, {b.num_classes})"
        )


def serve(bundle: str | Path | Bundle, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Run ``create_app(bundle, **kwargs)`` with uvicorn until interrupted."""
    from lightning_nas._optional import require

    uvicorn = require("uvicorn", extra="serve", feature="deploy.serve.serve")

    check_int("port", port, 0, 65535)
    app = create_app(bundle, **kwargs)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)


__all__ = ["create_app", "parse_inputs", "serve"]
