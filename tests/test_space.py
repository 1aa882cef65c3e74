"""The search-space vocabulary: choices, size, freeze, build/ValueChoice, bad input, NNI interop."""

import io
import warnings

import pytest
import torch
from torch import nn

from lightning_nas import space
from tests.helpers import SpaceNet, fast_trainer


def test_choices_size_architectures():
    net = SpaceNet()
    assert space.choices(net) == {"b1": ["conv3", "conv1", "skip"], "b2": ["0", "1"], "inp": ["0", "1"]}
    assert space.size(net) == 12
    archs = space.architectures(net)
    assert len(archs) == 12 and archs[0] == {"b1": "conv3", "b2": "0", "inp": "0"}
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # runs before freezing (first candidates)


def test_freeze_is_plain_and_matches_and_exports_onnx():
    torch.manual_seed(0)
    net = SpaceNet().eval()
    arch = {"b1": "conv1", "b2": "1", "inp": "1"}
    frozen = space.freeze(net, arch)
    assert not space.named_choices(frozen)
    assert isinstance(frozen.b1, nn.Conv2d) and frozen.b1.kernel_size == (1, 1) and isinstance(frozen.b2, nn.Identity)
    assert isinstance(net.b1, space.LayerChoice)  # the original is untouched
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(frozen(x), net.head(net.stem(x).mean((2, 3))))  # inp "1" = the stem output
    # a frozen model has fewer parameters than the space and is exportable to ONNX
    assert sum(p.numel() for p in frozen.parameters()) < sum(p.numel() for p in net.parameters())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (x,), buf, dynamo=False)
    assert buf.getbuffer().nbytes > 0


def test_freeze_bad_arch():
    net = SpaceNet()
    with pytest.raises(ValueError, match=r"lacks label.*'inp'"):
        space.freeze(net, {"b1": "conv3", "b2": "0"})
    with pytest.raises(ValueError, match=r"unknown label.*'zz'"):
        space.freeze(net, {"b1": "conv3", "b2": "0", "inp": "0", "zz": "a"})
    with pytest.raises(ValueError, match=r"arch\['b1'\].*'conv7'.*conv3"):
        space.freeze(net, {"b1": "conv7", "b2": "0", "inp": "0"})
    with pytest.raises(TypeError, match="arch"):
        space.freeze(net, ["conv3"])


def test_bad_choices():
    with pytest.raises(ValueError, match="at least 2"):
        space.LayerChoice({"only": nn.Identity()}, label="x")
    with pytest.raises(ValueError, match="n_chosen"):
        space.InputChoice(2, n_chosen=2, label="x")
    with pytest.raises(ValueError, match="n_candidates"):
        space.InputChoice(1, label="x")
    with pytest.raises(TypeError, match="label"):
        space.LayerChoice([nn.Identity(), nn.Identity()], label=3)
    with pytest.raises(ValueError, match="at least 2"):
        space.ValueChoice([8], label="w")


def test_tied_label_same_candidates_is_one_decision():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = space.LayerChoice({"x": nn.Identity(), "y": nn.ReLU()}, label="cell")
            self.b = space.LayerChoice({"x": nn.Identity(), "y": nn.ReLU()}, label="cell")

        def forward(self, x):
            return self.b(self.a(x))

    m = Tied()
    assert space.choices(m) == {"cell": ["x", "y"]} and space.size(m) == 2
    assert space.decisions(m)["cell"].paths == ["a", "b"]
    f = space.freeze(m, {"cell": "y"})
    assert isinstance(f.a, nn.ReLU) and isinstance(f.b, nn.ReLU)


def test_same_label_different_candidates_raises():
    m = nn.Sequential(
        space.LayerChoice({"x": nn.Identity(), "y": nn.ReLU()}, label="cell"),
        space.LayerChoice({"x": nn.Identity(), "z": nn.Tanh()}, label="cell"),
    )
    with pytest.raises(ValueError, match=r"'cell'.*different candidates.*\['x', 'y'\].*\['x', 'z'\]"):
        space.choices(m)


def test_value_choice_build_and_fixed_arch():
    def make():
        w = space.ValueChoice([4, 8], label="width")
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), space.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act")
        )

    assert space.search_space(make) == {"width": [4, 8], "act": ["relu", "tanh"]}
    model = space.build(make)
    assert model[0].out_channels == 4 and space.size(model) == 4
    frozen = space.build(make, {"width": 8, "act": "tanh"})
    assert frozen[0].out_channels == 8 and isinstance(frozen[1], nn.Tanh) and not space.named_choices(frozen)
    assert space.freeze(model, {"act": "tanh"})[0].out_channels == 4  # a ValueChoice may be omitted: as built
    with pytest.raises(ValueError, match="cannot become 8"):
        space.freeze(model, {"width": 8, "act": "relu"})
    with pytest.raises(ValueError, match="not one of"):
        space.build(make, {"width": 5, "act": "relu"})
    with space.fixed_arch({"width": 8}):
        assert space.ValueChoice([4, 8], label="width") == 8
    assert space.ValueChoice([4, 8], label="width") == 4  # outside any context: the first value


def test_plain_fit_with_choices_then_freeze(tmp_path, digits):
    from lightning_nas.models import Classifier

    module = Classifier(SpaceNet())
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1).fit(module, datamodule=digits)
    frozen = space.freeze(module, {"b1": "conv3", "b2": "0", "inp": "0"})
    assert isinstance(frozen.net.b1, nn.Conv2d)
    x = digits.example_input(4)
    assert torch.allclose(frozen.eval()(x), module.eval()(x))  # the default path is what was trained


def test_nni_choices_recognised():
    pytest.importorskip("nni")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace

        class NNINet(ModelSpace):
            def __init__(self):
                super().__init__()
                self.op = LayerChoice({"conv": nn.Conv2d(1, 1, 3, padding=1), "id": nn.Identity()}, label="op")
                self.lst = LayerChoice([nn.ReLU(), nn.Tanh()], label="act")
                self.inp = InputChoice(2, n_chosen=1, label="inp")

            def forward(self, x):
                return self.inp([self.lst(self.op(x)), x])

        m = NNINet()
    assert space.choices(m) == {"op": ["conv", "id"], "act": ["0", "1"], "inp": ["0", "1"]}
    assert space.size(m) == 8
    f = space.freeze(m, {"op": "conv", "act": "1", "inp": "0"})
    assert isinstance(f.op, nn.Conv2d) and isinstance(f.lst, nn.Tanh) and isinstance(f.inp, space.SelectInputs)
    with pytest.raises(ValueError, match="arch"):
        space.freeze(m, {"op": "conv", "act": "7", "inp": "0"})
