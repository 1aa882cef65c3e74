"""Bundle round trip: ONNX float/int8 and TorchScript reproduce the torch model, the card is complete, and
tampered, missing or foreign files are refused."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import DemoModel

from lightning_nas.deploy import BundleError, ModelCard, bundle, load_bundle
from lightning_nas.deploy.bundle import FLOAT_ATOL, FLOAT_RTOL
from tests.helpers import trained_digits_cnn


@pytest.fixture(scope="module")
def cnn():
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def digits_bundle(cnn, tmp_path_factory):
    net, dm = cnn
    card = ModelCard("digits-cnn").add_stage("search", strategy="darts", chosen={"block1": "conv3"})
    out = tmp_path_factory.mktemp("b") / "bundle"
    bundle(
        net,
        dm.example_input(16),
        out,
        int8=True,
        reference_data=dm.split("train").tensors[0],
        metrics={"test_acc": 0.95},
        card=card,
        normalisation="pixel / 16",
    )
    return out


def test_round_trip_outputs_match(cnn, digits_bundle):
    net, dm = cnn
    x = dm.split("test").tensors[0]
    with torch.no_grad():
        want = net(x).numpy()
    b = load_bundle(digits_bundle)
    got_float = b.session().run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got_float, want, atol=FLOAT_ATOL, rtol=FLOAT_RTOL)
    with torch.no_grad():
        got_ts = b.torchscript()(x).numpy()
    np.testing.assert_allclose(got_ts, want, atol=FLOAT_ATOL, rtol=FLOAT_RTOL)
    # int8: a different model by design; stated tolerance: >= 95 % top-1 agreement, probabilities within 0.05
    got_int8 = b.session(int8=True).run(None, {"input": x.numpy()})[0]
    assert (got_int8.argmax(1) == want.argmax(1)).mean() >= 0.95
    soft = lambda z: torch.softmax(torch.from_numpy(z), 1).numpy()  # noqa: E731
    assert np.abs(soft(got_int8) - soft(want)).mean() < 0.05
    # the int8 model really is int8: QDQ nodes and a smaller file
    import onnx

    ops = {n.op_type for n in onnx.load(str(digits_bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (digits_bundle / "model.int8.onnx").stat().st_size < (digits_bundle / "model.onnx").stat().st_size


def test_card_is_complete(digits_bundle):
    card = load_bundle(digits_bundle).card
    assert "DigitsCNN" in card["architecture"] and "Conv2d" in card["architecture"]
    assert set(card["versions"]) >= {"torch", "lightning", "lightning_nas"}
    spec = card["input_spec"]
    assert spec["dtype"] == "float32" and spec["shape"] == ["batch", 1, 8, 8]
    assert spec["normalisation"] == "pixel / 16" and spec["range"] == [0.0, 1.0]
    assert card["stages"][0]["stage"] == "search" and card["metrics"]["test_acc"] == 0.95
    m = card["measurements"]
    assert m["params"] > 0 and m["size_bytes"] > 0 and m["macs"] > 0
    assert m["latency_ms"] > 0 and m["onnx_latency_ms"] > 0 and m["int8_onnx_latency_ms"] > 0
    meta = card["bundle"]
    assert set(meta["files"]) == {"model.onnx", "model.int8.onnx", "model.ts", "profile.json"}
    assert all(len(f["sha256"]) == 64 for f in meta["files"].values())
    assert meta["output"] == {"kind": "logits", "num_classes": 10, "class_names": [str(i) for i in range(10)]}
    assert meta["checks"]["model.int8.onnx"]["top1_agreement"] >= 0.95
    prof = load_bundle(digits_bundle).profile()
    assert len(prof.names) == 64 and prof.data["attribution"]["method"] == "IntegratedGradients"
    assert abs(sum(prof.data["prediction"]["fractions"]) - 1) < 1e-9


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_missing_and_foreign_files_are_refused(digits_bundle, tmp_path):
    b = _copy(digits_bundle, tmp_path / "t1")
    data = bytearray((b / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx .*does not match its recorded sha256"):
        load_bundle(b)
    b = _copy(digits_bundle, tmp_path / "t2")
    (b / "profile.json").unlink()
    with pytest.raises(BundleError, match="missing profile.json"):
        load_bundle(b)
    b = _copy(digits_bundle, tmp_path / "t3")
    card = json.loads((b / "card.json").read_text())
    card["metrics"]["test_acc"] = 0.999  # a better-looking card: still refused
    (b / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="card was edited"):
        load_bundle(b)
    b = _copy(digits_bundle, tmp_path / "t4")  # a swapped model whose new hash was written into the card
    card = json.loads((b / "card.json").read_text())
    card["bundle"]["files"]["model.ts"]["sha256"] = "0" * 64
    (b / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="model.ts"):
        load_bundle(b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle: it has no card.json"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "t1" / "model.ts")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "card.json").write_text(json.dumps({"name": "someone else's card"}))
    with pytest.raises(BundleError, match="no 'bundle' section"):
        load_bundle(tmp_path / "other")
    (tmp_path / "other" / "card.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "other")


def test_int8_from_bytes_or_path_made_elsewhere(cnn, digits_bundle, tmp_path):
    """An int8 QDQ ONNX produced elsewhere (e.g. after QAT) is accepted as bytes or as a path."""
    net, dm = cnn
    q = (digits_bundle / "model.int8.onnx").read_bytes()
    b1 = load_bundle(bundle(net, dm.example_input(4), tmp_path / "bytes", int8=q))
    b2 = load_bundle(bundle(net, dm.example_input(4), tmp_path / "path", int8=digits_bundle / "model.int8.onnx"))
    assert b1.has_int8 and b2.has_int8 and b1.profile() is None
    x = dm.example_input(8).numpy()
    np.testing.assert_array_equal(
        b1.session(int8=True).run(None, {"input": x})[0], b2.session(int8=True).run(None, {"input": x})[0]
    )
    with pytest.raises(ValueError, match="int8 model cannot run"):
        bundle(net, dm.example_input(4), tmp_path / "garbage", int8=b"not an onnx model")
    with pytest.raises(FileNotFoundError, match="`int8` path"):
        bundle(net, dm.example_input(4), tmp_path / "nofile", int8=tmp_path / "missing.onnx")


def test_bad_arguments(cnn, tmp_path):
    net, dm = cnn
    x = dm.example_input(4)
    with pytest.raises(ValueError, match="calibrates the int8 model on `reference_data`"):
        bundle(net, x, tmp_path / "a", int8=True)
    with pytest.raises(ValueError, match="`example_input` must be a float batch"):
        bundle(net, torch.ones(4, dtype=torch.long), tmp_path / "b")
    with pytest.raises(ValueError, match="`reference_data` samples have shape"):
        bundle(net, x, tmp_path / "c", reference_data=torch.rand(50, 64))
    with pytest.raises(ValueError, match="at least 20 inputs"):
        bundle(net, x, tmp_path / "c2", reference_data=torch.rand(5, 1, 8, 8))
    with pytest.raises(ValueError, match="`output` must be one of"):
        bundle(net, x, tmp_path / "d", output="softmax")
    with pytest.raises(TypeError, match="`model` must be Module"):
        bundle("net", x, tmp_path / "e")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        bundle(net, x, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").exists()
    with pytest.raises(ValueError, match="class_names"):
        bundle(net, x, tmp_path / "f", class_names=["a", "b"])


def test_bundle_a_model_we_did_not_write(tmp_path):
    """Lightning's own DemoModel (a Linear on 32 features), unmodified, with a reference profile and int8."""
    torch.manual_seed(0)
    model = DemoModel()
    ref = torch.randn(300, 32)
    b = load_bundle(bundle(model, ref[:8], tmp_path / "demo", int8=True, reference_data=ref))
    x = torch.randn(20, 32)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(b.session().run(None, {"input": x.numpy()})[0], want, atol=FLOAT_ATOL, rtol=FLOAT_RTOL)
    assert b.input_shape == (32,) and b.num_classes == want.shape[1] and b.profile().names[0] == "x[0]"
    assert model.training  # bundling restores the caller's mode
