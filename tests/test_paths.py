"""explain.paths (decision paths), explain.graph (architecture view) and their callbacks."""

import json

import pytest
import torch

from lightning_nas.callbacks import ArchitectureView, DecisionPaths
from lightning_nas.deploy import count_macs
from lightning_nas.explain import graph as G
from lightning_nas.explain import paths as P
from lightning_nas.explain.attribution import select_probe
from lightning_nas.models import Classifier, DigitsCNN
from tests._explain_helpers import trained_digits_cnn
from tests.helpers import fast_trainer, read_jsonl


@pytest.fixture(scope="module")
def trained():
    return trained_digits_cnn()


def test_paths_overlap_and_ablation_on_trained_digits(trained):
    net, dm = trained
    probe = select_probe(dm.val_dataloader(), 50, seed=0)
    rep = P.decision_paths(net, probe.x, probe.y, top_k=3)
    assert rep.layers == ["features.2", "features.5"] and rep.classes == list(range(10))
    assert all(len(ch) == 3 for layer in rep.layers for ch in rep.top_channels[layer].values())
    assert all(rep.overlap[(c, c)] == 1.0 for c in rep.classes)
    assert rep.overlap[(1, 7)] == rep.overlap[(7, 1)] and 0 <= rep.mean_overlap < 0.6  # classes use different paths
    # zeroing a class's top channels of the last block lowers that class's logit, for most classes
    drops = [rep.group_ablation[(c, "features.5")] for c in rep.classes]
    assert sum(d > 0 for d in drops) >= 8, drops
    per_class = {}
    for c, _layer, _ch, d in rep.ablation:
        per_class.setdefault(c, []).append(d)
    assert all(v == sorted(v, reverse=True) and len(v) == 3 for v in per_class.values())
    tables = rep.tables()
    assert set(tables) == {"top_channels", "overlap", "ablation"} and len(tables["overlap"][1]) == 45
    assert net.training is False
    with pytest.raises(ValueError, match="layers"):
        P.decision_paths(net, probe.x, probe.y, layers=["nope"])


def test_layer_table_matches_measured_macs_and_graph_renders(trained, tmp_path):
    net, dm = trained
    x = dm.example_input(2)
    rows = G.layer_table(net, x)
    assert [r.name for r in rows][:3] == ["features.0", "features.1", "features.2"]
    conv = rows[0]
    assert (conv.type, conv.in_shape, conv.out_shape, conv.params) == ("Conv2d", "2x1x8x8", "2x16x8x8", 160)
    assert sum(r.macs for r in rows) == count_macs(net, x)
    assert sum(r.params for r in rows) == sum(p.numel() for p in net.parameters())
    edges = G.graph_edges(net, [r.name for r in rows])
    assert ("features.6", "pool") in edges and len(edges) == len(rows) - 1
    fig = G.render_graph(rows, edges, "digits")
    fig.savefig(tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 5000


def test_graph_edges_follow_a_skip_connection():
    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(self.b(h) + h)

    edges = G.graph_edges(Res(), ["a", "b", "c"])
    assert sorted(edges) == [("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.slow
def test_paths_and_architecture_callbacks_on_a_fit(tmp_path, digits):
    paths = DecisionPaths(n_samples=30, every_n_epochs=1)
    view = ArchitectureView()
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[paths, view])
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    root = tmp_path / "nas_files"
    overlap = read_jsonl(root / "tables" / "explain_paths_overlap.jsonl")
    assert len(overlap) == 3 and overlap[-1]["columns"] == ["class_a", "class_b", "jaccard"]  # 2 epochs + end
    layers = read_jsonl(root / "tables" / "explain_architecture_layers.jsonl")
    assert len(layers) == 2 and layers[0]["columns"] == G.TABLE_COLUMNS and len(layers[0]["rows"]) == 9
    # the model did not change: the graph drawn at the start is not drawn again at the end
    assert len(list((root / "images").glob("explain_architecture_graph-*.png"))) == 1
    assert json.loads((root / "summary.json").read_text())["explain/architecture/changed"] is False
    scal = read_jsonl(root / "scalars.jsonl")
    assert any("explain/paths/mean_jaccard" in s for s in scal)
    assert any(
        s.get("explain/architecture/params") == sum(p.numel() for p in trainer.lightning_module.parameters())
        for s in scal
    )


def test_callbacks_on_the_demo_transformer(tmp_path, monkeypatch):
    from lightning.pytorch.demos.transformer import LightningTransformer

    from tests._explain_helpers import TokenDigits, last_token_logits

    monkeypatch.setattr(LightningTransformer, "prepare_data", lambda self: None)  # it would download WikiText-2
    view = ArchitectureView(forward_fn=lambda m, x: m(x, x))
    paths = DecisionPaths(
        n_samples=8, target="pred", forward_fn=last_token_logits, layers=["model.transformer.encoder.layers.0.linear1"]
    )
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[view, paths])
    trainer.fit(LightningTransformer(vocab_size=17), datamodule=TokenDigits())
    assert paths.report is not None and paths.report.layers == ["model.transformer.encoder.layers.0.linear1"]
    rows = read_jsonl(tmp_path / "nas_files" / "tables" / "explain_architecture_layers.jsonl")
    names = [r[0] for r in rows[0]["rows"]]
    assert "model.embedding" in names and "model.decoder" in names
    macs = {r[0]: r[5] for r in rows[0]["rows"]}  # the encoder's fused fast path must not hide its matmuls
    enc = "model.transformer.encoder.layers.0"
    assert macs[f"{enc}.self_attn"] > 0 and macs[f"{enc}.linear1"] > 0


def test_bad_arguments_and_setup_errors(tmp_path, digits):
    with pytest.raises(ValueError, match="top_k"):
        DecisionPaths(top_k=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        DecisionPaths(every_n_epochs=0)
    with pytest.raises(ValueError, match="max_nodes"):
        ArchitectureView(max_nodes=0)
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[DecisionPaths(layers=["net.nope"])])
    with pytest.raises(ValueError, match="net.nope"):
        trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    paths = DecisionPaths(n_samples=20)  # no validation data: the training steps' inputs are followed
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[paths])
    trainer.fit(Classifier(DigitsCNN(4)), train_dataloaders=digits.train_dataloader())
    assert paths.probe.x.shape == (20, 1, 8, 8) and paths.report is not None


def test_architecture_view_without_validation_data_uses_a_training_sample(tmp_path, digits):
    view = ArchitectureView()
    trainer = fast_trainer(tmp_path, limit_train_batches=1, callbacks=[view])
    trainer.fit(Classifier(DigitsCNN(4)), train_dataloaders=digits.train_dataloader())
    assert tuple(view._example[0][0].shape) == (1, 1, 8, 8)  # (args, kwargs) of what the step fed the model
    assert len(list((tmp_path / "nas_files" / "images").glob("explain_architecture_graph-*.png"))) == 1


def test_architecture_view_draws_the_graph_again_when_compression_changed_the_model(tmp_path, digits):
    from lightning_nas.callbacks import StructuredPruning

    view = ArchitectureView()
    prune = StructuredPruning(amount=0.5, start_epoch=0, end_epoch=0)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[prune, view])
    trainer.fit(Classifier(DigitsCNN(8)), datamodule=digits)
    root = tmp_path / "nas_files"
    images = sorted((root / "images").glob("explain_architecture_graph-*.png"))
    assert len(images) == 2
    layers = read_jsonl(root / "tables" / "explain_architecture_layers.jsonl")
    params = G.TABLE_COLUMNS.index("params")
    assert sum(r[params] for r in layers[-1]["rows"]) < sum(r[params] for r in layers[0]["rows"])
    assert json.loads((root / "summary.json").read_text())["explain/architecture/changed"] is True


def test_one_relu_module_reused_after_layers_of_different_widths():
    """A common pattern (one ``self.act = nn.ReLU()`` for every layer): each call is followed on its own."""
    from lightning_nas.explain.paths import decision_paths

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = torch.nn.Linear(64, 32), torch.nn.Linear(32, 48), torch.nn.Linear(48, 10)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.out(self.act(self.fc2(self.act(self.fc1(x)))))

    torch.manual_seed(0)
    model, x = MLP(), torch.randn(40, 64)
    report = decision_paths(model, x, model(x).argmax(1), layers=["act"], top_k=3)
    assert report.layers == ["act#0", "act#1"]
    assert max(ch for chans in report.top_channels["act#0"].values() for ch in chans) < 32  # (was: IndexError)
    assert report.ablation and all(layer in ("act#0", "act#1") for _, layer, _, _ in report.ablation)
    capped = decision_paths(model, x, model(x).argmax(1), layers=["act"], top_k=3, max_ablations=4)
    assert {layer for _, layer, _, _ in capped.ablation} == {"act#1"} and capped.overlap == report.overlap
    assert len({ch for _, _, ch, _ in capped.ablation}) <= 4  # four forwards: the classes' best channels first
