import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_nas.deploy import ModelCard, export, measure, onnx_session
from lightning_nas.models import DigitsCNN

X = torch.rand(16, 1, 8, 8)


def test_half_the_channels_costs_less():
    torch.manual_seed(0)
    big, small = (
        measure(DigitsCNN(32).eval(), X, repeats=5, warmup=1),
        measure(DigitsCNN(16).eval(), X, repeats=5, warmup=1),
    )
    assert small.params < 0.3 * big.params  # conv2 is quadratic in the width
    assert small.size_bytes < 0.35 * big.size_bytes
    assert small.macs < 0.3 * big.macs and small.flops == 2 * small.macs
    assert big.latency_ms > 0 and big.onnx_latency_ms > 0 and big.batch_size == 16
    # parameter count and MACs are exact for this architecture
    w = 32
    assert big.params == sum(p.numel() for p in DigitsCNN(32).parameters())
    conv_macs = 64 * (9 * w) + 64 * (9 * w * 2 * w)
    assert big.macs >= 16 * (conv_macs + 2 * w * 10)


def test_measure_restores_training_mode():
    m = DigitsCNN(8).train()
    measure(m, X, repeats=2, warmup=0, onnx=False)
    assert m.training


def test_onnx_export_matches_torch_with_dynamic_batch(tmp_path):
    model = DigitsCNN(8).eval()
    path = export(model, X[:2], tmp_path / "m.onnx")
    sess = onnx_session(path)
    for n in (1, 16):
        got = sess.run(None, {"input": X[:n].numpy()})[0]
        np.testing.assert_allclose(got, model(X[:n]).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_torchscript_export_roundtrip(tmp_path):
    model = DigitsCNN(8).eval()
    path = export(model, X[:2], tmp_path / "m.pt", format="torchscript")
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(X), model(X))


class _NeedsTwoInputs(nn.Module):
    def forward(self, a, b):
        return a + b


def test_clear_errors():
    with pytest.raises(ValueError, match="cannot run on example_input of shape"):
        measure(DigitsCNN(8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="_NeedsTwoInputs cannot run"):
        measure(_NeedsTwoInputs(), X)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        measure("model", X)
    with pytest.raises(TypeError, match="example_input"):
        measure(DigitsCNN(8), [1, 2])
    with pytest.raises(ValueError, match="format"):
        export(DigitsCNN(8), X, "x.bin", format="pickle")
    with pytest.raises(ValueError, match="repeats"):
        measure(DigitsCNN(8), X, repeats=0)


def test_model_card_records_stages(tmp_path):
    model = DigitsCNN(8)
    card = ModelCard("m", model, input_spec={"dtype": "float32", "shape": ["batch", 1, 8, 8]})
    m = measure(model, X, repeats=2, warmup=0, onnx=False)
    card.add_stage("train", test_acc=0.9, measurements=m)
    card.metrics["test_acc"] = 0.9
    data = json.loads(card.save(tmp_path / "card.json").read_text())
    assert data["stages"][0]["measurements"]["params"] == m.params
    assert data["versions"]["torch"] == torch.__version__ and "Conv2d" in data["architecture"]
    assert data["input_spec"]["shape"] == ["batch", 1, 8, 8]


def test_serialized_size_is_what_torch_save_writes_int8_included():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from lightning_nas.deploy import serialized_size

    net = DigitsCNN(8).eval()
    prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (X[:2],))
    prepared(X)  # calibrate the observers
    int8 = convert_fx(prepared)
    for model in (net, int8):  # counted, not copied: the bytes torch.save writes to a buffer
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        assert serialized_size(model) == buf.getbuffer().nbytes
    assert serialized_size(int8) < 0.8 * serialized_size(net)
