"""Structured / unstructured pruning: physical shrinkage, importance, schedules, optimizer rebuild, resume."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.callbacks import MagnitudePruning, StructuredPruning
from lightning_nas.compress import prune as P
from lightning_nas.deploy import load_compressed, measure
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer


class ResNetish(nn.Module):
    """Residual adds, a grouped conv and a concatenation: what the dependency graph must keep consistent."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.a = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c),
            nn.BatchNorm2d(c),
        )
        self.b = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):
        s = self.stem(x)
        h = torch.relu(self.a(s) + s)
        h = torch.cat([h, self.b(h)], 1)
        return self.head(h.mean((2, 3)))


def test_structured_prune_removes_channels_and_replays():
    torch.manual_seed(0)
    for model in (DigitsCNN(32), ResNetish(16)):
        fresh = copy.deepcopy(model)
        x = torch.rand(8, 1, 8, 8)
        before = measure(model, x, latency=False, onnx=False)
        res = P.prune_structured(model, x, 0.5)
        after = measure(model, x, latency=False, onnx=False)
        assert after.params < 0.45 * before.params and after.macs < 0.45 * before.macs
        out = P.find_output_layer(model, x)
        assert dict(model.named_modules())[out].out_features == 10  # the logits are never pruned
        # the replay on a fresh, unpruned instance gives the same architecture, so the weights load exactly
        P.replay_pruning(fresh, [s.to_dict() for s in res.steps], x)
        fresh.load_state_dict(model.state_dict())
        model.eval(), fresh.eval()
        torch.testing.assert_close(model(x), fresh(x))


@pytest.mark.parametrize("importance", P.IMPORTANCES)
def test_importance_removes_lowest_scored_channels(importance):
    torch.manual_seed(0)
    model = DigitsCNN(16)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():  # make BN scales and magnitudes distinct
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 2.0)
    if importance == "taylor":
        nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,))).backward()
    res = P.prune_structured(model, x, 0.25, importance=importance)
    assert res.scores, "no layer scored"
    for layer, scores in res.scores.items():
        s = torch.tensor(scores)
        removed = res.removed[layer]
        kept = [i for i in range(len(scores)) if i not in removed]
        assert len(removed) == len(scores) // 4
        assert s[removed].max() <= s[kept].min() + 1e-6


def test_global_pruning_and_ignore():
    model = DigitsCNN(16)
    x = torch.rand(4, 1, 8, 8)
    layers = P.prunable_layers(model, x)
    assert set(layers) == {"features.0", "features.3"}  # classifier excluded automatically
    assert set(P.prunable_layers(model, x, ignore=["features.0"])) == {"features.3"}
    P.prune_structured(model, x, 0.4, global_pruning=True, ignore=["features.0"])
    assert model.features[0].out_channels == 16 and model.features[3].out_channels < 32


def test_magnitude_prune_global_and_permanent():
    model = DigitsCNN(8)
    sp = P.magnitude_prune(model, 0.6)
    total = sum(m.weight.numel() for _, m in P.magnitude_targets(model))
    zeros = sum(sp[n] * m.weight.numel() for n, m in P.magnitude_targets(model))
    assert abs(zeros / total - 0.6) < 0.01
    P.magnitude_prune(model, 0.5, global_pruning=False)  # per layer: each at least 50%
    assert min(P.sparsity(model).values()) >= 0.5 - 1e-3
    P.make_permanent(model)
    assert not any("mask" in k for k in model.state_dict())


def _loaders(digits):
    train = DataLoader(digits.split("train"), batch_size=64, shuffle=False)
    val = DataLoader(digits.split("val"), batch_size=256)
    return train, val


class _StepLRClassifier(Classifier):
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]


def test_callback_prunes_gradually_rebuilds_optimizer_and_keeps_scheduler(tmp_path, digits):
    L.seed_everything(0)
    module = _StepLRClassifier(DigitsCNN(32), lr=1e-2)
    cb = StructuredPruning(0.5, schedule="cubic", start_epoch=1, end_epoch=3)
    seen = {}

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            seen[trainer.current_epoch] = (opt.param_groups[0]["lr"], pl_module.net.features[0].out_channels)

        def on_train_batch_end(self, trainer, pl_module, *a):
            opt = trainer.optimizers[0]
            params = {id(p) for g in opt.param_groups for p in g["params"]}
            assert params == {id(p) for p in pl_module.parameters()}  # optimizer holds the live parameters

    train, val = _loaders(digits)
    trainer = fast_trainer(tmp_path, max_epochs=6, callbacks=[cb, Probe()], num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    # StepLR(gamma=0.7) kept its position through the rebuilds
    assert [round(seen[e][0] / 1e-2, 4) for e in range(6)] == [1, 0.7, 0.49, 0.343, 0.2401, 0.1681]
    counts = [seen[e][1] for e in range(6)]
    # cubic: s = 0.5 (1 - (1 - p)^3) at p = 0, 1/2, 1 -> 0, 0.4375, 0.5 of 32 channels (seen the epoch after)
    assert counts == [32, 32, 32, 18, 16, 16]
    assert cb.done == [1, 2, 3] and len(cb.records) == 2
    acc = trainer.validate(module, val, verbose=False)[0]["val_acc"]
    assert acc > 0.6, acc  # fine-tuned after a 4x parameter cut
    files = trainer.default_root_dir + "/nas_files"
    import json
    import pathlib

    scalars = [json.loads(line) for line in pathlib.Path(files, "scalars.jsonl").read_text().splitlines()]
    assert any(r.get("prune/net.features.0/sparsity") == 0.5 for r in scalars)
    assert any("prune/net.features.3/channels" in r for r in scalars)
    assert pathlib.Path(files, "tables", "prune_importance.csv").exists()


@pytest.mark.slow
def test_resume_after_pruning_into_fresh_unpruned_module(tmp_path, digits):
    """A checkpoint saved after pruning loads into a fresh module; the resumed fit ends where an
    uninterrupted fit ends."""
    train, val = _loaders(digits)

    def run(max_epochs, ckpt=None, root="a", module=None):
        L.seed_everything(0)
        module = module or Classifier(DigitsCNN(16))
        ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / root, save_last=True, save_top_k=0)
        tr = fast_trainer(
            tmp_path,
            max_epochs=max_epochs,
            deterministic=True,
            num_sanity_val_steps=0,
            callbacks=[StructuredPruning(0.5, schedule="linear", start_epoch=1, end_epoch=2), ck],
            enable_checkpointing=True,
        )
        tr.fit(module, train, val, ckpt_path=ckpt)
        return module

    full = run(4, root="full")
    run(2, root="part")  # stops after epoch index 1: one pruning done, one still to come
    resumed = run(4, ckpt=str(tmp_path / "part" / "last.ckpt"), root="res", module=Classifier(DigitsCNN(16)))
    assert resumed.net.features[0].out_channels == full.net.features[0].out_channels == 8
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    # outside a Trainer: the same checkpoint into another fresh module
    loaded = load_compressed(Classifier(DigitsCNN(16)), str(tmp_path / "res" / "last.ckpt"))
    for (k, a), (_, b) in zip(full.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_on_unmodified_lightning_demos(tmp_path):
    from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
    from lightning.pytorch.demos.transformer import LightningTransformer

    # DemoModel's only layer produces the output: a clear error before the first step
    with pytest.raises(ValueError, match="no prunable layer"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[StructuredPruning(0.5)]).fit(
            DemoModel(), DataLoader(RandomDataset(32, 64), batch_size=8)
        )
    demo = DemoModel()
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[MagnitudePruning(0.5)]).fit(
        demo, DataLoader(RandomDataset(32, 64), batch_size=8)
    )
    assert abs(float((demo.l1.weight == 0).float().mean()) - 0.5) < 0.01

    # a transformer with nn.MultiheadAttention: feed-forward dims are physically removed
    torch.manual_seed(0)
    tokens = torch.arange(400) % 37
    pairs = [(tokens[i : i + 12], tokens[i + 1 : i + 13]) for i in range(0, 360, 12)]
    lt = LightningTransformer(vocab_size=40)
    lt.prepare_data = lambda: None  # its prepare_data downloads WikiText-2; tests are offline
    n0 = sum(p.numel() for p in lt.parameters())
    # its PositionalEncoding adds a cached tensor of the model width to the embedding, outside any parameter:
    # the width's group cannot be pruned. At its defaults the callback's dry run finds that group before the first
    # step and keeps it whole, with a warning naming it; everything else is pruned
    cb = StructuredPruning()
    with pytest.warns(UserWarning, match="kept whole"):
        fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[cb]).fit(
            lt, DataLoader(pairs, batch_size=4)
        )
    assert len(cb.kept_whole) == 1 and cb.kept_whole[0].startswith("model.transformer.")
    ff = [m for n, m in lt.named_modules() if n.endswith("linear1")]
    assert ff and all(m.out_features == 100 for m in ff)  # 200 -> 100
    assert lt.model.embedding.embedding_dim == 200 and lt.model.decoder.out_features == 40  # width and vocabulary
    assert sum(p.numel() for p in lt.parameters()) < n0
    # the groups kept whole are checkpoint state (a resumed fit prunes the same groups); old states load
    restored = StructuredPruning()
    restored.load_state_dict(cb.state_dict())
    assert restored._ignore == cb.kept_whole
    old = {k: v for k, v in cb.state_dict().items() if k != "kept_whole"}
    restored.load_state_dict(old)
    assert restored.kept_whole == []

    # naming the width in `ignore` keeps it whole without the warning, with the same result
    lt2 = LightningTransformer(vocab_size=40)
    lt2.prepare_data = lambda: None
    cb2 = StructuredPruning(0.5, ignore=["model.embedding"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[cb2]).fit(
            lt2, DataLoader(pairs, batch_size=4)
        )
    assert not [w for w in caught if "kept whole" in str(w.message)] and cb2.kept_whole == []
    assert sum(p.numel() for p in lt2.parameters()) == sum(p.numel() for p in lt.parameters())


def test_breaking_groups_names_what_torch_pruning_cannot_see():
    """A buffer of the residual width (Lightning's demo Transformer's positional encoding): the group that feeds it
    breaks the pruned model; ignoring the layer breaking_groups names keeps it whole and the rest prunes."""
    from lightning.pytorch.demos.transformer import Transformer

    torch.manual_seed(0)
    net = Transformer(vocab_size=30)
    x = (torch.randint(0, 30, (2, 8)), torch.randint(0, 30, (2, 8)))
    layers = P.prunable_layers(net, x)
    amount = {n: 0.5 for n in layers}  # every group at once, as the callback asks
    with pytest.raises(RuntimeError, match="no longer runs"):
        P.prune_structured(copy.deepcopy(net), x, amount)
    before = copy.deepcopy(net.state_dict())
    bad = P.breaking_groups(net, x, amount)
    assert len(bad) == 1
    for k, v in net.state_dict().items():  # found on copies
        torch.testing.assert_close(v, before[k])
    kept = list(P.prunable_layers(net, x, bad))
    assert len(set(layers) - set(kept)) == 1  # one group (the width's) is kept whole, the feed-forward ones prune
    assert all(n in kept for n in layers if n.endswith("linear1"))
    pruned = copy.deepcopy(net)
    P.prune_structured(pruned, x, {n: 0.5 for n in kept}, ignore=bad)
    assert pruned(*x).shape == net(*x).shape
    assert all(m.out_features == 100 for n, m in pruned.named_modules() if n.endswith("linear1"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(amount=1.0), "amount"),
        (dict(amount=-0.1), "amount"),
        (dict(importance="random"), "importance"),
        (dict(schedule="exp"), "schedule"),
        (dict(start_epoch=3, end_epoch=1, schedule="cubic"), "before"),
        (dict(importance="taylor", start_epoch=0), "taylor"),
        (dict(amount=4, global_pruning=True), "global"),
    ],
)
def test_structured_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredPruning(**kwargs)


def test_structured_bad_model_config(tmp_path, digits):
    train, _ = _loaders(digits)
    with pytest.raises(ValueError, match="not smaller than the channel count"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[StructuredPruning(amount=40)]).fit(
            Classifier(DigitsCNN(8)), train
        )
    with pytest.raises(ValueError, match="no prunable layer"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[StructuredPruning(ignore=["net.features"])]).fit(
            Classifier(DigitsCNN(8)), train
        )
    with pytest.raises(ValueError, match="bn_scale"):
        mlp = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)))
        fast_trainer(tmp_path, max_steps=1, callbacks=[StructuredPruning(importance="bn_scale")]).fit(mlp, train)
    with pytest.raises(ValueError, match="amount"):
        MagnitudePruning(amount=1.5)
    with pytest.raises(ValueError, match="no Linear/Conv"):
        fast_trainer(tmp_path, max_steps=1, callbacks=[MagnitudePruning(ignore=["net"])]).fit(
            Classifier(DigitsCNN(8)), train
        )


def test_step_schedule_and_magnitude_gradual(tmp_path, digits):
    train, _ = _loaders(digits)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *a):
            seen.append(pl_module.net.features[0].out_channels)

    cb = StructuredPruning(0.5, schedule="linear", start_step=2, end_step=6, every_n_steps=2)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=8, callbacks=[cb, Probe()]).fit(
        Classifier(DigitsCNN(16)), train
    )
    # linear over steps 2..6 every 2: 0, 1/2, 1 of 50% -> 16, 12, 8 channels from the step each event fires
    assert seen == [16, 16, 16, 16, 12, 12, 8, 8] and cb.done == [2, 4, 6]
    module = Classifier(DigitsCNN(8))
    mp = MagnitudePruning(0.8, schedule="cubic", start_epoch=0, end_epoch=2, make_permanent=False)
    fast_trainer(tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[mp]).fit(module, train)
    zero = sum(int((m.weight == 0).sum()) for _, m in P.magnitude_targets(module))
    assert abs(zero / sum(m.weight.numel() for _, m in P.magnitude_targets(module)) - 0.8) < 0.01
    assert hasattr(module.net.features[0], "weight_mask")  # not folded: make_permanent=False
