"""The route to the logits is found from the forward calls of a real step, whatever the step does to the batch."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_nas.callbacks._capture import ModelIO, ProbeCollector
from lightning_nas.callbacks._route import ROOT, CallRecorder, Chain, Route, find_route, match_glue, per_sample_logits
from tests.helpers import fast_trainer


def _record(root, fn):
    with CallRecorder(root) as rec:
        out = fn()
    return rec, out


class _Upsampling(L.LightningModule):  # the step resizes, then calls a submodule
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = F.interpolate(x, size=28)
        return F.cross_entropy(self.net(x), y)


def test_route_is_the_submodule_the_step_calls_with_what_it_receives():
    m = _Upsampling()
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    rec, loss = _record(m, lambda: m.training_step((x, y), 0))
    found = find_route(rec.calls, loss)
    assert found.route == Route(("net",))
    assert found.call.args[0].shape == (5, 1, 28, 28)
    assert torch.equal(found.route(m, *found.call.args), found.call.output)


class _BackboneHead(nn.Module):
    def __init__(self, glue):
        super().__init__()
        self.glue = glue
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear({"flatten": 6 * 4 * 4, "pool2": 6 * 2 * 2}.get(glue, 6), 10)
        self.criterion = nn.CrossEntropyLoss()

    def step(self, x, y):
        f = self.backbone(x)
        if self.glue == "mean":
            f = f.mean((2, 3))
        elif self.glue == "pool":
            f = F.adaptive_avg_pool2d(f, 1).flatten(1)
        elif self.glue == "flatten":
            f = f.flatten(1)
        elif self.glue == "max":
            f = f.amax(dim=(-1, -2))
        elif self.glue == "pool2":
            f = F.adaptive_avg_pool2d(f, 2).flatten(1)
        return self.criterion(self.head(f), y)


@pytest.mark.parametrize(
    "glue,expected", [("mean", "mean"), ("pool", "mean"), ("flatten", "same"), ("max", "amax"), ("pool2", "avg_pool@2")]
)
def test_backbone_then_head_is_one_route_through_the_glue(glue, expected):
    m = _BackboneHead(glue)
    x, y = torch.randn(3, 3, 4, 4), torch.randint(0, 10, (3,))
    rec, loss = _record(m, lambda: m.step(x, y))
    found = find_route(rec.calls, loss)
    assert found.route.paths == ("backbone", "head")
    assert found.route.links[0][0] == expected
    assert found.dropped == []
    out = found.route(m, x)
    assert torch.allclose(out, found.call.output)
    assert Route.from_state(found.route.to_state()) == found.route


def test_unknown_glue_ends_the_route_and_names_what_was_left_out():
    m = _BackboneHead("mean")
    x, y = torch.randn(3, 3, 4, 4), torch.randint(0, 10, (3,))
    rec, loss = _record(m, lambda: m.criterion(m.head(m.backbone(x).std((2, 3))), y))
    found = find_route(rec.calls, loss)
    assert found.route == Route(("head",)) and found.dropped == ["backbone"]


def test_the_route_ends_where_the_loss_comes_from():
    m = _BackboneHead("mean")
    x, y = torch.randn(3, 3, 4, 4), torch.randint(0, 10, (3,))

    def step():
        logits = m.head(m.backbone(x).mean((2, 3)))
        m.backbone(x * 2)  # e.g. features for logging, after the logits
        return F.cross_entropy(logits, y)

    rec, loss = _record(m, step)
    assert find_route(rec.calls, loss).route.paths == ("backbone", "head")


def test_self_call_is_named_by_the_parts_its_forward_runs():
    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.drop = nn.Linear(16, 8), nn.Linear(8, 3), nn.Dropout(0.5)
            self.scale = nn.Parameter(torch.full((1,), 2.0))

        def forward(self, x):
            return self.b(F.relu(self.a(x.flatten(1))))

    m = M()
    x = torch.randn(6, 4, 4)
    rec, _ = _record(m, lambda: m(x))
    found = find_route(rec.calls, inner=rec.inner)
    assert found.route == Route(("a", "b"), (("relu", (8,)),), ("same", (16,)), whole="")
    assert torch.allclose(Chain.of(found.route.modules(m), found.route)(x), m(x))  # the parts alone, standalone
    assert torch.allclose(found.route(m, x), m(x)) and found.call.args[0] is x
    m.forward = lambda x: m.b(m.a(x.flatten(1))) * m.scale  # code beyond its parts: the LightningModule itself
    rec, _ = _record(m, lambda: m(x))
    assert find_route(rec.calls, inner=rec.inner).route == ROOT


def test_dropout_between_parts_is_recognised():
    out = torch.randn(16, 8)
    assert match_glue(out, F.dropout(out, 0.5, training=True)) == ("same", (8,))


def test_per_sample_logits_of_sequence_outputs_is_the_last_position():
    t = torch.randn(2, 5, 7)
    assert torch.equal(per_sample_logits(t, 2), t[:, -1])
    assert torch.equal(per_sample_logits(t.reshape(10, 7), 2), t[:, -1])
    assert per_sample_logits(torch.randn(3), 3) is None


class _DictModule(L.LightningModule):
    """Dict batches, preprocessing in the step, a submodule, logging and a validation loop."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))

    def _prep(self, batch):
        return F.interpolate(batch["image"], size=16) * 2 - 1, batch["label"]

    def training_step(self, batch, batch_idx):
        x, y = self._prep(batch)
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = self._prep(batch)
        self.log("val_loss", F.cross_entropy(self.model(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


class _Spy(L.Callback):
    """A callback using the service the way lightning_nas callbacks do."""

    def __init__(self):
        self.routes, self.records, self.probe = {}, [], ProbeCollector(6, seed=0)

    def setup(self, trainer, pl_module, stage):
        self.io = ModelIO.of(pl_module).attach(self)
        self.io.on_route(self, lambda kind, r: self.routes.__setitem__(kind, r))
        self.io.listen(self, "eval", self.probe)
        self.io.listen(self, "train", self.records.append)

    def teardown(self, trainer, pl_module, stage):
        self.io.detach(self)


def test_service_finds_the_route_in_a_real_fit_and_leaves_the_module_as_it_was(tmp_path):
    m, spy = _DictModule(), _Spy()
    data = torch.utils.data.DataLoader(_Dicts(), batch_size=8)
    fast_trainer(tmp_path, callbacks=[spy], limit_train_batches=3, limit_val_batches=2).fit(m, data, data)
    assert spy.routes == {"eval": Route(("model",)), "train": Route(("model",))}
    assert spy.io.example("train")[0][0].shape == (2, 1, 16, 16)
    assert len(spy.records) == 3 and all(len(r.calls) == 1 for r in spy.records)
    assert spy.records[0].calls[0].args[0].shape == (8, 1, 16, 16)  # the step's input, not the raw batch
    probe = spy.probe.probe()
    assert probe.x.shape == (6, 1, 16, 16) and probe.y is not None and len(probe.indices) == 6
    assert "training_step" not in m.__dict__ and "validation_step" not in m.__dict__


def test_a_copy_made_during_the_fit_runs_its_own_step(tmp_path):
    m, spy = _DictModule(), _Spy()
    ModelIO.of(m).attach(spy)
    twin = copy.deepcopy(m)
    assert "training_step" not in twin.__dict__ or twin.training_step.__self__ is twin
    ModelIO.of(m).detach(spy)
    assert "training_step" not in m.__dict__
