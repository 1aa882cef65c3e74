"""compress.quantize and explain.quant_sensitivity without Lightning: prepare, int8 torch, int8 ONNX, PTQ."""

import numpy as np
import pytest
import torch
from torch import nn

from lightning_nas.compress import quantize as Q
from lightning_nas.explain.quant_sensitivity import SENSITIVITY_COLUMNS, layer_sqnr, quant_sensitivity
from lightning_nas.models import DigitsCNN


def _qat(width=8, ignore=(), steps=6, seed=0):
    from lightning_nas.data.digits import load_digits_arrays

    torch.manual_seed(seed)
    x, y = load_digits_arrays()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = DigitsCNN(width)
    qat = Q.prepare_qat(model.train(), (), "x86", ignore)
    opt = torch.optim.Adam(qat.parameters(), lr=1e-2)
    for i in range(steps):
        xb, yb = x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]
        loss = nn.functional.cross_entropy(qat(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    Q.set_observers(qat, False)
    Q.refresh_weight_ranges(qat)  # the weight ranges of the final weights, as convert_int8 takes them
    return model, qat.eval(), x[-256:], y[-256:]


def test_prepare_shares_parameters_and_folds_bn():
    model = DigitsCNN(8)
    qat = Q.prepare_qat(model.train())
    assert {id(p) for p in qat.parameters()} == {id(p) for p in model.parameters()}
    assert Q.qat_layers(qat) == ["features.0", "features.3", "classifier"]  # conv+bn+relu fused
    wfq = qat.get_submodule("features.3").weight_fake_quant
    assert wfq.qscheme == torch.per_channel_symmetric and wfq.dtype == torch.qint8


def test_int8_torch_and_onnx_agree_with_dynamic_batch():
    from lightning_nas.deploy.export import onnx_session

    _, qat, x, _ = _qat()
    int8 = Q.convert_int8(qat)
    assert any(m._get_name() == "QuantizedConvReLU2d" for m in int8.modules())
    w = int8.get_submodule("features.3").weight()
    assert w.dtype == torch.qint8 and w.qscheme() == torch.per_channel_affine
    with torch.no_grad():
        ref, fq = int8(x), qat(x)
    assert (ref.argmax(1) == fq.argmax(1)).float().mean() > 0.9
    onnx_model = Q.export_int8_onnx(int8, x[:1])
    ops = Q.int8_onnx_ops(onnx_model)
    assert "QLinearConv" in ops and "Conv" not in ops  # ORT runs real int8 kernels
    sess = onnx_session(onnx_model)
    for n in (1, 37, 256):  # the batch axis is dynamic
        out = sess.run(None, {"input": x[:n].numpy()})[0]
        assert out.shape == (n, 10)
        np.testing.assert_allclose(out, ref[:n].numpy(), atol=0.1)


def test_compact_onnx_forms_run_bit_identically_and_are_smaller():
    import onnx

    from lightning_nas.compress.quantize_onnx import check_same_outputs, compact_onnx
    from lightning_nas.deploy.export import onnx_bytes, onnx_session

    model, qat, x, _ = _qat(width=16)
    int8 = Q.convert_int8(qat)
    raw, qdq, fused = (Q.export_int8_onnx(int8, x[:1], form=f) for f in ("raw", "qdq", "fused"))
    assert len(fused) < len(qdq) < 0.85 * len(raw)
    xs = x.numpy()
    check_same_outputs(raw, qdq, xs)  # same kernels, same scales: bit-identical
    check_same_outputs(raw, fused, xs)
    g = onnx.load_from_string(qdq).graph
    assert {n.domain for n in g.node} <= {""}  # portable: standard ONNX ops only
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in g.node}
    assert sorted(Q.int8_onnx_ops(qdq)) == sorted(Q.int8_onnx_ops(raw))  # ORT still fuses QLinearConv / QGemm
    assert "QLinearConv" in {n.op_type for n in onnx.load_from_string(fused).graph.node}
    names = [t.name for t in g.initializer]
    assert len(names) == len(set(names)) and max(map(len, names)) <= 6
    contents = {(t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes()) for t in g.initializer}
    assert len(contents) == len(names)  # identical initializers stored once
    sess = onnx_session(qdq)
    assert sess.run(None, {"input": xs[:37]})[0].shape == (37, 10)  # batch axis still dynamic
    fp = onnx_bytes(model.eval(), x[:1])  # a float graph compacts too
    check_same_outputs(fp, compact_onnx(fp), xs)
    with pytest.raises(ValueError, match="form"):
        Q.export_int8_onnx(int8, x[:1], form="zip")


def test_skip_keeps_layer_float_and_ptq_baseline():
    model, qat, x, y = _qat(ignore=["classifier"])
    assert "classifier" not in Q.qat_layers(qat)
    int8 = Q.convert_int8(qat)
    assert type(int8.get_submodule("classifier")) is nn.Linear
    ptq = Q.post_training_quantize(model, [x[:128]])
    assert ptq.get_submodule("features.0")._get_name() == "QuantizedConvReLU2d"
    with torch.no_grad():
        assert ptq(x).shape == (len(x), 10)


def test_observers_frozen_do_not_move_in_eval():
    _, qat, x, _ = _qat()
    before = Q.quant_state(qat)
    with torch.no_grad():
        qat(x * 5)  # data far outside the calibrated range
    after = Q.quant_state(qat)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_weight_qparams_are_initialised_before_any_observed_step():
    # torch sizes per-channel scales on the first forward with resize_ (uninitialised bytes, NaN possible):
    # before QAT starts they would reach checkpoints and make equal states compare unequal
    dirty = torch.full((1 << 16,), float("nan"))
    del dirty
    qat = Q.prepare_qat(DigitsCNN(8).train())
    Q.set_fake_quant(qat, False)
    Q.set_observers(qat, False)
    before = Q.quant_state(qat)
    for name in Q.qat_layers(qat):
        fq = qat.get_submodule(name).weight_fake_quant
        channels = qat.get_submodule(name).weight.shape[0]
        assert torch.equal(fq.scale, torch.ones(channels)) and not fq.zero_point.any()
    with torch.no_grad():
        qat.eval()(torch.randn(4, 1, 8, 8))
    after = Q.quant_state(qat)
    assert all(torch.equal(before[k], after[k]) for k in before if before[k].shape == after[k].shape)
    assert all(before[k].shape == after[k].shape for k in before if k.endswith((".scale", ".zero_point")))


def test_sqnr_and_sensitivity_table():
    _, qat, x, y = _qat(steps=8)
    sqnr = layer_sqnr(qat, [x[:128]])
    assert set(sqnr) == {"features.0", "features.3", "classifier"}
    assert all(np.isfinite(v) and v > 0 for v in sqnr.values())
    before = Q.quant_state(qat)
    rows = quant_sensitivity(qat, [(x, y)])
    assert [r[0] for r in rows] == Q.qat_layers(qat) and len(rows[0]) == len(SENSITIVITY_COLUMNS)
    assert all(r[1] == "quant_int8" and r[2] == 8 and 0 <= r[3] <= 1 for r in rows)
    Q.set_fake_quant(qat, False)
    with torch.no_grad():
        float_acc = float((qat(x).argmax(1) == y).float().mean())
    assert all(abs(r[4] - (float_acc - r[3])) < 1e-9 for r in rows)  # drop = baseline - accuracy
    after = Q.quant_state(qat)
    assert all(torch.equal(before[k], after[k]) for k in before if "fake_quant_enabled" not in k)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no quantizable layer"):
        Q.prepare_qat(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(ValueError, match="`ignore` name 'nope' matches no submodule"):
        Q.prepare_qat(DigitsCNN(4), ignore=["nope"])
    with pytest.raises(ValueError, match="backend"):
        Q.prepare_qat(DigitsCNN(4), backend="tpu")

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(ValueError, match="could not trace"):
        Q.prepare_qat(Untraceable())
