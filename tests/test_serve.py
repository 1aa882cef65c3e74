"""`lightning-nas serve` in a subprocess on a free loopback port, real HTTP requests; bad requests get 4xx."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_nas.cli import main
from lightning_nas.deploy import bundle
from lightning_nas.deploy.serve import _BadRequest, parse_inputs
from tests.helpers import clean_pool, rotated, start_server, stop_server, trained_digits_cnn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    net, dm = trained_digits_cnn()
    out = bundle(
        net,
        dm.example_input(8),
        tmp_path_factory.mktemp("s") / "bundle",
        int8=True,
        reference_data=dm.split("train").tensors[0],
        metrics={"test_acc": 0.9},
    )
    proc, client = start_server(out, "--max-batch", "32", "--window", "200")
    yield net, dm, out, client
    stop_server(proc, client)
    assert proc.returncode is not None


@pytest.mark.slow
def test_predict_health_card(served):
    net, dm, out, client = served
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "float" and h["input_shape"] == [1, 8, 8]
    assert (
        client.get("/card").json()["bundle"]["files"]["model.onnx"]["sha256"]
        == json.loads((out / "card.json").read_text())["bundle"]["files"]["model.onnx"]["sha256"]
    )
    x = dm.split("test").tensors[0][:32]
    r = client.post("/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200
    body = r.json()
    with torch.no_grad():
        want = torch.softmax(net(x), 1).numpy()
    assert body["classes"] == want.argmax(1).tolist() and body["model"] == "float"
    np.testing.assert_allclose(np.array(body["probabilities"]), want, atol=1e-5)
    assert body["labels"][0] == str(body["classes"][0])


@pytest.mark.slow
def test_bad_requests_are_4xx_with_a_message(served):
    _, dm, _, client = served
    good = dm.split("test").tensors[0][:2].tolist()
    cases = [
        (b"this is not json", 400, "not valid JSON"),
        (b"[" * 20000, 400, "not valid JSON"),
        (json.dumps({"data": good}).encode(), 422, '{"inputs": [...]}'),
        (json.dumps({"inputs": []}).encode(), 422, "non-empty list"),
        (json.dumps({"inputs": np.zeros((2, 64)).tolist()}).encode(), 422, "shape [1, 8, 8]"),
        (json.dumps({"inputs": [good[0], [[0.0] * 8]]}).encode(), 422, "ragged"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), "a").tolist()}).encode(), 422, "must be numbers"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), True).tolist()}).encode(), 422, "booleans"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), np.nan).tolist()}).encode(), 422, "NaN/inf"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), np.inf).tolist()}).encode(), 422, "NaN/inf"),
        (json.dumps({"inputs": np.full((1, 1, 8, 8), 1e300).tolist()}).encode(), 422, "beyond float32"),
        (json.dumps({"inputs": np.zeros((33, 1, 8, 8)).tolist()}).encode(), 413, "maximum batch size 32"),
        (b'{"inputs": [' + b"0.0," * 200000 + b"0.0]}", 413, "exceeds the limit"),
    ]
    for body, status, msg in cases:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:80], r.text)
        assert msg in r.json()["error"], r.text
    assert client.get("/nowhere").status_code == 404
    assert client.get("/predict").status_code == 405
    assert client.get("/health").json()["status"] == "ok"  # still alive


@pytest.mark.slow
def test_drift_endpoint_over_the_request_window(served):
    _, dm, _, client = served
    pool = clean_pool(dm)
    rng = np.random.default_rng(0)
    clean = pool[rng.choice(len(pool), 200, replace=False)]
    for i in range(0, 200, 32):
        assert client.post("/predict", json={"inputs": clean[i : i + 32].tolist()}).status_code == 200
    d = client.get("/drift").json()
    assert d["status"] == "ok" and d["n_samples"] == 200 and not d["drifted"], d["verdict"]
    shifted = rotated(clean)
    for i in range(0, 200, 32):
        client.post("/predict", json={"inputs": shifted[i : i + 32].tolist()})
    d = client.get("/drift").json()  # the window (200) now holds rotated digits only
    assert d["drifted"] and d["next_step"] in ("retrain", "re-search") and d["drifted_features"]
    assert d["attribution_shift"] is not None and d["psi_max"] > 0.25


@pytest.mark.slow
def test_int8_server(served):
    net, dm, out, _ = served
    proc, client = start_server(out, "--int8")
    try:
        x = dm.split("test").tensors[0][:64]
        body = client.post("/predict", json={"inputs": x.tolist()}).json()
        assert body["model"] == "int8"
        with torch.no_grad():
            want = net(x).argmax(1).numpy()
        assert (np.array(body["classes"]) == want).mean() >= 0.95
        d = client.get("/drift").json()  # the int8 server keeps its own window: 64 clean digits
        assert d["n_samples"] == 64 and not d["drifted"], d["verdict"]
    finally:
        stop_server(proc, client)


def test_serve_refuses_what_is_not_a_valid_bundle(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 2
    assert "is not a bundle" in capsys.readouterr().err
    net, dm = trained_digits_cnn(epochs=1)
    out = bundle(net, dm.example_input(4), tmp_path / "b")
    (out / "model.onnx").write_bytes(b"swapped")
    assert main(["serve", str(out)]) == 2
    assert "does not match its recorded sha256" in capsys.readouterr().err
    out = bundle(net, dm.example_input(4), tmp_path / "c")
    assert main(["serve", str(out), "--int8"]) == 2
    assert "has no int8 model" in capsys.readouterr().err
    assert main(["serve", str(out), "--max-batch", "0"]) == 2
    assert "`max_batch` must be in" in capsys.readouterr().err
    assert main(["serve", str(out), "--drift-thresholds", '{"psi": -1}']) == 2
    assert "`psi` must be in (0.0, 100.0]" in capsys.readouterr().err
    assert main(["serve", str(out), "--drift-thresholds", "{psi"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_parse_inputs_unit():
    x = parse_inputs({"inputs": [[1, 2], [3, 4]]}, (2,), 4)
    assert x.dtype == np.float32 and x.shape == (2, 2)
    with pytest.raises(_BadRequest, match="maximum batch size 1"):
        parse_inputs({"inputs": [[1, 2], [3, 4]]}, (2,), 1)
    with pytest.raises(_BadRequest, match="must be numbers"):
        parse_inputs({"inputs": [[{"a": 1}, 2]]}, (2,), 4)
    with pytest.raises(_BadRequest, match="body must be a JSON object"):
        parse_inputs([[1, 2]], (2,), 4)
