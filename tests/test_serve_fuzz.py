"""The server never answers 500 (issue 15): hostile-but-finite inputs, wrong Content-Type, Schemathesis fuzzing
from the OpenAPI schema, and Hypothesis properties of ``parse_inputs``. In process (FastAPI's TestClient),
except the one keep-alive test, which needs a real socket."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lightning_nas.deploy import bundle
from lightning_nas.deploy.profile import attribution_share
from lightning_nas.deploy.serve import _BadRequest, create_app, parse_inputs
from tests.helpers import clean_pool, trained_digits_cnn

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    net, dm = trained_digits_cnn(epochs=2)
    out = bundle(
        net,
        dm.example_input(4),
        tmp_path_factory.mktemp("fuzz") / "bundle",
        reference_data=dm.split("train").tensors[0],
    )
    return out, dm


@pytest.fixture
def client(digits_bundle):
    out, _ = digits_bundle
    app = create_app(out, max_batch=8, window=64, attribution_samples=16)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client, inputs):
    return client.post("/predict", content=json.dumps({"inputs": inputs}), headers=JSON)


# ----------------------------------------------------------------------------------- item 2: finite but huge
@pytest.mark.parametrize("value", [1e37, -1e37, 3e38, -3e38])
def test_inputs_that_overflow_the_model_are_422_and_stay_out_of_the_window(client, digits_bundle, value):
    _, dm = digits_bundle
    r = _post(client, np.full((2, 1, 8, 8), value).tolist())
    assert r.status_code == 422, r.text
    assert "output is not finite" in r.json()["error"] and "drift window" in r.json()["error"]
    assert client.get("/health").json()["window"] == 0
    clean = clean_pool(dm)[:40]
    mixed = clean[:8].copy()
    mixed[3] = value  # one bad row rejects the whole request
    assert _post(client, mixed.tolist()).status_code == 422
    for i in range(0, 40, 8):
        assert _post(client, clean[i : i + 8].tolist()).status_code == 200
    big = clean[:8].copy()
    big[:, 0, 0, 0] = 1e20  # huge yet finite through the model: served, and /drift still answers
    assert _post(client, big.tolist()).status_code == 200
    d = client.get("/drift")
    assert d.status_code == 200 and d.json()["n_samples"] == 48, d.text


def test_attribution_share_ignores_inputs_whose_attribution_overflows():
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.fill_(1e30)
        net.bias.zero_()
    huge = np.full((3, 4), 3e38, np.float32)
    assert attribution_share(net, huge, "feature") is None  # before: NaN shares, then a 500 from /drift
    mixed = np.concatenate([huge, np.ones((2, 4), np.float32)])
    share = attribution_share(net, mixed, "feature")
    assert share is not None and np.isfinite(share).all() and math.isclose(share.sum(), 1.0)


@pytest.mark.slow
def test_keep_alive_connection_survives_a_rejected_request(digits_bundle):
    """Over a real socket: the 422 keeps the connection usable (a 500 used to reset it)."""
    from tests.helpers import start_server, stop_server

    out, dm = digits_bundle
    proc, client = start_server(out, "--max-batch", "8")
    try:
        r = client.post("/predict", json={"inputs": np.full((1, 1, 8, 8), 3e38).tolist()})
        assert r.status_code == 422
        r = client.post("/predict", json={"inputs": dm.example_input(2).tolist()})
        assert r.status_code == 200
    finally:
        stop_server(proc, client)


# ----------------------------------------------------------------------------------- item 9: smaller ones
def test_predict_requires_a_json_content_type(client, digits_bundle):
    _, dm = digits_bundle
    body = json.dumps({"inputs": dm.example_input(1).tolist()})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        r = client.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == 415 and "application/json" in r.json()["error"], (ctype, r.text)
    assert client.get("/health").json()["window"] == 0
    r = client.post("/predict", content=body, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200


def test_error_messages_name_positions_in_plain_numbers():
    with pytest.raises(_BadRequest) as err:
        parse_inputs({"inputs": [[1.0, float("nan")]]}, (2,), 4)
    assert err.value.status == 422 and "first at inputs[0][1]" in err.value.message
    assert "np." not in err.value.message
    ok = parse_inputs({"inputs": [[10**30, -(10**25)]]}, (2,), 4)  # beyond int64, inside float32
    assert ok.dtype == np.float32 and ok[0, 0] == np.float32(1e30)
    for big in (10**40, 10**400):
        with pytest.raises(_BadRequest, match=r"beyond float32 range.*inputs\[0\]\[0\]") as err:
            parse_inputs({"inputs": [[big, 1]]}, (2,), 4)
        assert "different lengths" not in err.value.message
    with pytest.raises(_BadRequest, match=r"got booleans at inputs\[0\]\[0\]"):
        parse_inputs({"inputs": [[True, 2.5]]}, (2,), 4)  # numpy would quietly turn True into 1.0
    with pytest.raises(_BadRequest, match=r"ragged.*inputs\[1\]\[1\]"):
        parse_inputs({"inputs": [[1, 2], [3, [4]]]}, (2,), 4)


# ----------------------------------------------------------------------------------- Hypothesis: parse_inputs
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)
)
_json = st.recursive(
    _json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=30,
)
_F32 = float(np.finfo(np.float32).max)


@settings(max_examples=300, deadline=None, database=None)
@given(
    body=st.one_of(_json, st.fixed_dictionaries({"inputs": _json})), shape=st.sampled_from([(2,), (1, 2), (2, 1, 1)])
)
def test_parse_inputs_accepts_exactly_well_formed_batches(body, shape):
    """Either a float32 (N, *shape) batch of finite values, or a 4xx ``_BadRequest``; never anything else."""
    try:
        x = parse_inputs(body, shape, 3)
    except _BadRequest as exc:
        assert exc.status in (413, 422) and exc.message and "\n" not in exc.message
        return
    assert x.dtype == np.float32 and x.shape[1:] == shape and 1 <= len(x) <= 3 and np.isfinite(x).all()
    flat = np.asarray(body["inputs"], dtype=object).ravel().tolist()
    assert all(type(v) in (int, float) for v in flat)


_number = st.one_of(
    st.integers(min_value=-(10**45), max_value=10**45), st.floats(allow_nan=False, allow_infinity=False)
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.lists(_number, min_size=2, max_size=2), min_size=1, max_size=5))
def test_parse_inputs_on_numbers(rows):
    fits = all(abs(float(v)) <= _F32 and np.isfinite(np.float32(v)) for r in rows for v in r)
    if len(rows) > 4:
        with pytest.raises(_BadRequest, match="maximum batch size"):
            parse_inputs({"inputs": rows}, (2,), 4)
    elif fits:
        np.testing.assert_array_equal(
            parse_inputs({"inputs": rows}, (2,), 4), np.asarray(rows, dtype=np.float64).astype(np.float32)
        )
    else:
        with pytest.raises(_BadRequest, match="beyond float32"):
            parse_inputs({"inputs": rows}, (2,), 4)


# ----------------------------------------------------------------------------------- Schemathesis
OPERATIONS = [("POST", "/predict"), ("GET", "/health"), ("GET", "/card"), ("GET", "/drift")]


@pytest.fixture(scope="module")
def api(digits_bundle):
    out, dm = digits_bundle
    app = create_app(out, max_batch=4, window=40, attribution_samples=8)
    with TestClient(app) as c:  # a window already full enough for /drift to run attributions on every call
        for i in range(0, 40, 4):
            assert _post(c, clean_pool(dm)[i : i + 4].tolist()).status_code == 200
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_schema_documents_every_operation(api):
    assert {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize(
    "method,path,mode",
    [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [("POST", "/predict", GenerationMode.NEGATIVE)],
    ids=str,
)  # GETs take no parameters
def test_openapi_fuzz_never_500_and_responses_match_the_schema(api, method, path, mode):
    """Every operation, bodies that fit the schema and (POST) bodies that do not: no 5xx, responses as documented."""
    op = api[path][method]

    @settings(
        max_examples=100 if method == "POST" else 5,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(
            checks=[not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
        )

    fuzz()
