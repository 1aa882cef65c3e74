"""One-shot NAS callbacks (DARTS, GDAS, SPOS) on ordinary Lightning modules: search, explanations, bad input."""

import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
from torch import nn
from torch.utils.data import DataLoader

from lightning_nas import space
from lightning_nas.callbacks import DifferentiableNAS, SubnetSampling
from lightning_nas.models import Classifier
from lightning_nas.search.oneshot import MixedLayer, evolutionary_search
from tests.helpers import SmallSpace, conv_bn_relu, fast_trainer


def _scalars(tmp_path):
    files = list(tmp_path.rglob("nas_files/scalars.jsonl"))
    assert files, "no scalars written"
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def test_darts_on_ordinary_classifier(tmp_path, digits):
    torch.manual_seed(0)
    module = Classifier(SmallSpace())
    module.example_input_array = torch.zeros(2, 1, 8, 8)  # lets setup() check candidate shapes up front
    nas = DifferentiableNAS(mode="darts", seed=0, ablation_batches=2)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=6, limit_val_batches=2, callbacks=[nas])
    trainer.fit(module, datamodule=digits)
    # the candidates' weights are in the user's optimizer, alpha is not
    opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in module.net.b1.candidates.parameters()} <= opt_ids
    assert not {id(a) for a in nas._supernet.alpha.values()} & opt_ids
    assert any(float(a.abs().max()) > 0 for a in nas._supernet.alpha.values())  # alpha moved
    arch = nas.export()
    assert set(arch) == {"b1", "b2"} and arch["b1"] in ("conv3", "conv1", "skip")
    # after fit the user's module holds its choices again, with the found candidate active
    assert isinstance(module.net.b1, space.LayerChoice) and module.net.b1.active == arch["b1"]
    best = nas.best_model()
    assert not space.named_choices(best)
    x = digits.example_input(5)
    nas.recalibrate_bn = False  # the same weights and statistics as the user's module
    assert torch.allclose(nas.best_model().eval()(x), module.eval()(x))
    # by default only the BatchNorm statistics are re-estimated for the exported path
    params = dict(best.named_parameters())
    assert all(torch.equal(p, params[n]) for n, p in nas.best_model().named_parameters())
    # explanations: per-epoch scalars, final table, ablation, one reason per decision
    rows = _scalars(tmp_path)
    keys = set().union(*rows)
    assert {"nas/b1/conv3", "nas/b1/skip", "nas/b1/entropy", "nas/b2/entropy"} <= keys
    probs = [r for r in rows if "nas/b1/conv3" in r]
    assert len(probs) == 2 and abs(sum(probs[-1][f"nas/b1/{c}"] for c in ("conv3", "conv1", "skip")) - 1) < 1e-6
    assert [r[0] for r in nas.decision_table()] == ["b1", "b2"]
    assert set(nas.ablation()["b1"]) == {"conv3", "conv1", "skip"}
    assert set(nas.reasons()) == {"b1", "b2"} and arch["b1"] in nas.reasons()["b1"]
    assert list(tmp_path.rglob("series/nas_b1_history.json")) and list(tmp_path.rglob("tables/nas_decisions.csv"))


def test_gdas_one_path_per_step_and_tau_annealed(tmp_path, digits):
    torch.manual_seed(0)
    net = SmallSpace()
    calls = {n: 0 for n in ("conv3", "conv1", "skip")}
    for n in calls:
        net.b1.candidates[n].register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls[n] + 1))
    nas = DifferentiableNAS(mode="gdas", tau_max=5.0, tau_min=0.5, seed=1, ablation_batches=0)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=5, limit_val_batches=0, callbacks=[nas])
    trainer.fit(Classifier(net), datamodule=digits)
    # shape check (each candidate once) + per step: one arch and one weight forward, one path each
    assert sum(calls.values()) == 3 + 2 * 10 and min(calls.values()) >= 1
    taus = [r["nas/tau"] for r in _scalars(tmp_path) if "nas/tau" in r]
    assert len(taus) == 2 and 0.5 <= taus[1] < taus[0] <= 5.0


def test_spos_evolution_with_bn_recalibration(tmp_path, digits):
    torch.manual_seed(0)
    module = Classifier(SmallSpace())
    sampler = SubnetSampling(population=3, generations=2, calib_batches=2, eval_batches=2, seed=0)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=6, limit_val_batches=2, callbacks=[sampler])
    trainer.fit(module, datamodule=digits)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    arch = sampler.export()
    assert set(arch) == {"b1", "b2"} and len(sampler.scored) == 6  # the whole 6-architecture space
    best_score = max(s for _, s in sampler.scored)
    assert dict(sampler.scored[[s for _, s in sampler.scored].index(best_score)][0]) == arch
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # BN stats put back
    assert min(sampler.ablation()["b1"].values()) == pytest.approx(0.0)  # switching to the winner costs nothing
    assert "switching" in sampler.reasons()["b1"]


def test_evolution_finds_optimum_of_known_function():
    space_ = {"a": ["0", "1", "2", "3"], "b": ["0", "1", "2", "3"], "c": ["0", "1", "2", "3"]}
    best, hist = evolutionary_search(
        space_,
        lambda a: -sum((int(v) - 2) ** 2 for v in a.values()),
        population=8,
        generations=6,
        generator=torch.Generator().manual_seed(0),
    )
    assert best == {"a": "2", "b": "2", "c": "2"} and len(hist) < 64


def test_unmodified_demo_model_with_a_choice_and_no_val_loader(tmp_path):
    model = DemoModel()
    model.l1 = space.LayerChoice(
        {"wide": nn.Linear(32, 10), "mlp": nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))}, label="l1"
    )
    nas = DifferentiableNAS(seed=0, ablation_batches=1)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[nas]).fit(
        model, train_dataloaders=DataLoader(RandomDataset(32, 64), batch_size=8)
    )
    assert nas.export()["l1"] in ("wide", "mlp") and float(nas._supernet.alpha["l1"].abs().max()) > 0


def test_spos_on_unmodified_demo_model_without_val_loader(tmp_path):
    model = DemoModel()
    model.l1 = space.LayerChoice(
        {"wide": nn.Linear(32, 10), "mlp": nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))}, label="l1"
    )
    sampler = SubnetSampling(population=2, generations=1, calib_batches=1, eval_batches=2, seed=0)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[sampler]).fit(
        model, train_dataloaders=DataLoader(RandomDataset(32, 64), batch_size=8)
    )
    assert sampler.export()["l1"] in ("wide", "mlp") and len(sampler.scored) == 2


@pytest.mark.parametrize("make", [lambda: DifferentiableNAS(), lambda: SubnetSampling()])
def test_no_choices_is_a_clear_error(tmp_path, make):
    cb = make()
    with pytest.raises(ValueError, match=f"{type(cb).__name__}: DemoModel has no LayerChoice"):
        fast_trainer(tmp_path, callbacks=[cb]).fit(DemoModel(), train_dataloaders=DataLoader(RandomDataset(32, 8)))


def test_manual_optimization_is_refused(tmp_path, digits):
    module = Classifier(SmallSpace())
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="automatic optimization"):
        fast_trainer(tmp_path, callbacks=[DifferentiableNAS()]).fit(module, datamodule=digits)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DifferentiableNAS("darts", seed=0, ablation_batches=1),
        lambda: DifferentiableNAS("gdas", seed=0, ablation_batches=1),
        lambda: SubnetSampling(population=2, generations=1, seed=0),
    ],
)
def test_input_choice_is_searched_and_frozen(tmp_path, digits, make):
    from tests.helpers import SpaceNet

    cb = make()
    module = Classifier(SpaceNet())
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[cb]).fit(
        module, datamodule=digits
    )
    arch = cb.export()
    assert arch["inp"] in ("0", "1") and set(arch) == {"b1", "b2", "inp"}
    frozen = cb.best_model().net
    assert isinstance(frozen.inp, space.SelectInputs) and frozen.inp.indices == [int(arch["inp"])]
    x = digits.example_input(3)
    assert torch.allclose(frozen.eval()(x), module.net.eval()(x))


@pytest.mark.parametrize("example", [False, True])
def test_candidates_with_different_shapes(tmp_path, digits, example):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = space.LayerChoice(
                {"keep": nn.Conv2d(1, 4, 3, padding=1), "shrink": nn.Conv2d(1, 4, 3)}, label="op"
            )
            self.head = nn.LazyLinear(10)

        def forward(self, x):
            return self.head(self.op(x).flatten(1))

    module = Classifier(Bad())
    if example:  # checked in setup(), before any step
        module.example_input_array = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"choice 'op'.*keep -> \(\d+, 4, 8, 8\).*shrink -> \(\d+, 4, 6, 6\)"):
        fast_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, callbacks=[DifferentiableNAS()]).fit(
            module, datamodule=digits
        )
    assert isinstance(module.net.op, space.LayerChoice)  # the failed fit left the user's choice in place


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "enas"}, "mode"),
        ({"arch_lr": 0.0}, "arch_lr"),
        ({"arch_lr": 2.0}, "arch_lr"),
        ({"tau_max": 0.0}, "tau_max"),
        ({"tau_max": 1.0, "tau_min": 2.0}, "tau_min"),
        ({"remedy": "magic"}, "remedy"),
        ({"arch_weight_decay": -1.0}, "arch_weight_decay"),
        ({"start_epoch": -1}, "start_epoch"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DifferentiableNAS(**kwargs)


def test_bad_subnet_sampling_arguments():
    with pytest.raises(ValueError, match="population"):
        SubnetSampling(population=1)
    with pytest.raises(ValueError, match="mutation_prob"):
        SubnetSampling(mutation_prob=1.5)


def test_tied_choices_share_alpha_and_remedies_schedule(tmp_path, digits):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.a = space.LayerChoice({"conv": conv_bn_relu(4, 3), "skip": nn.Identity()}, label="cell")
            self.b = space.LayerChoice({"conv": conv_bn_relu(4, 3), "skip": nn.Identity()}, label="cell")
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            return self.head(self.b(self.a(self.stem(x))).mean((2, 3)))

    for remedy in ("darts-", "beta-decay"):
        nas = DifferentiableNAS(remedy=remedy, seed=0, ablation_batches=0)
        fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[nas]).fit(
            Classifier(Tied()), datamodule=digits
        )
        assert list(nas._supernet.alpha) == ["cell"] and nas.export()["cell"] in ("conv", "skip")
        assert nas._supernet.aux_beta == 0.0  # the DARTS- auxiliary skip has decayed away by the end


def test_nni_layer_choice_is_searched(tmp_path, digits):
    pytest.importorskip("nni")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nni.nas.nn.pytorch import LayerChoice, ModelSpace

        class NNINet(ModelSpace):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(1, 4, 3, padding=1)
                self.op = LayerChoice({"conv": nn.Conv2d(4, 4, 3, padding=1), "id": nn.Identity()}, label="op")
                self.head = nn.Linear(4, 10)

            def forward(self, x):
                return self.head(self.op(self.stem(x)).mean((2, 3)))

        net = NNINet()
    keys = set(net.state_dict())
    nas = DifferentiableNAS(seed=0, ablation_batches=1)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[nas])
    module = Classifier(net)
    trainer.fit(module, datamodule=digits)
    assert nas.export()["op"] in ("conv", "id") and set(net.state_dict()) == keys
    assert isinstance(nas.best_model().net.op, (nn.Conv2d, nn.Identity))


def test_mixed_op_keeps_state_dict_keys():
    net = SmallSpace()
    keys = set(net.state_dict())
    from lightning_nas.search.oneshot import Supernet

    sn = Supernet(net, "darts")
    assert isinstance(net.b1, MixedLayer) and set(net.state_dict()) == keys
    sn.restore()
    assert isinstance(net.b1, space.LayerChoice)


@pytest.mark.slow
def test_demo_search_stage_streams_to_wandb_and_card(tmp_path):
    from lightning_nas.demo import run_demo
    from lightning_nas.tracking import read_offline_run

    out = run_demo(max_epochs=1, out_dir=tmp_path / "demo")
    card = json.loads(Path(out["card"]).read_text())
    search = card["stages"][0]
    assert search["stage"] == "search" and set(search["arch"]) == {"block1", "block2"}
    assert set(search["reasons"]) == {"block1", "block2"} and search["space_size"] == 9
    history, summary, _ = read_offline_run(out["wandb_run"])
    keys = set().union(*history)
    assert {
        "nas/block1/conv3",
        "nas/block1/entropy",
        "nas/decisions",
        "nas/ablation",
        "nas/block1/history_table",
    } <= keys  # a W&B line plot is stored as <key>_table
    assert summary["nas/arch/block1"] == search["arch"]["block1"]


def test_callbacks_build_from_lightning_cli_config():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--cb", type=DifferentiableNAS)
    parser.add_argument("--spos", type=SubnetSampling)
    cfg = parser.parse_args(
        [
            "--cb",
            '{"class_path": "lightning_nas.callbacks.DifferentiableNAS", '
            '"init_args": {"mode": "gdas", "tau_max": 5.0, "remedy": "darts-"}}',
            "--spos",
            '{"class_path": "lightning_nas.callbacks.SubnetSampling", "init_args": {"population": 6}}',
        ]
    )
    init = parser.instantiate_classes(cfg)
    assert init.cb.mode == "gdas" and init.cb.tau_max == 5.0 and init.spos.population == 6


def test_value_choices_stay_as_built_and_conflicting_labels_fail_in_setup(tmp_path, digits):
    def make():
        w = space.ValueChoice([4, 6], label="width")
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            space.LayerChoice({"conv": nn.Conv2d(w, w, 3, padding=1), "skip": nn.Identity()}, label="op"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(w, 10),
        )

    nas = DifferentiableNAS(seed=0, ablation_batches=0)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[nas]).fit(
        Classifier(space.build(make)), datamodule=digits
    )
    assert set(nas.export()) == {"op"} and nas.best_model().net[0].out_channels == 4

    bad = nn.Sequential(
        space.LayerChoice({"a": nn.Identity(), "b": nn.ReLU()}, label="x"),
        space.LayerChoice({"a": nn.Identity(), "c": nn.Tanh()}, label="x"),
    )
    with pytest.raises(ValueError, match="'x' is used by choices with different candidates"):
        fast_trainer(tmp_path, callbacks=[DifferentiableNAS()]).fit(Classifier(bad), datamodule=digits)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.op = space.LayerChoice({"a": nn.Linear(4, 4), "b": nn.Sequential(nn.Linear(4, 4), nn.Tanh())}, label="op")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.op(x))


def _tiny_setup(seed=0):
    from lightning_nas.search.oneshot import Supernet

    torch.manual_seed(seed)
    net = _Tiny()
    sn = Supernet(net, "darts", arch_lr=0.1, arch_weight_decay=0.0)
    with torch.no_grad():
        sn.alpha["op"].copy_(torch.tensor([0.3, -0.2]))
    g = torch.Generator().manual_seed(1)
    xt, yt = torch.randn(16, 4, generator=g), torch.randint(3, (16,), generator=g)
    xv, yv = torch.randn(16, 4, generator=g), torch.randint(3, (16,), generator=g)
    ce = nn.functional.cross_entropy
    return net, sn, (lambda: ce(net(xt), yt)), (lambda: ce(net(xv), yv)), (xt, yt, xv, yv)


def test_second_order_matches_exact_hypergradient_and_reduces_to_first_order():
    from torch.func import functional_call

    xi = 0.5
    # the exact DARTS hypergradient d/dalpha L_val(w - xi * grad_w L_train(w, alpha), alpha), by double backward
    net, sn, _, _, (xt, yt, xv, yv) = _tiny_setup()
    names, ws = zip(*net.named_parameters())
    sn.arch_grad = True
    ce = nn.functional.cross_entropy
    gw = torch.autograd.grad(ce(functional_call(net, dict(zip(names, ws)), (xt,)), yt), ws, create_graph=True)
    w1 = {n: w - xi * g for n, w, g in zip(names, ws, gw)}
    exact = torch.autograd.grad(ce(functional_call(net, w1, (xv,)), yv), sn.alpha["op"])[0]
    sn.arch_grad = False
    # the finite-difference approximation used by arch_step
    net, sn, train_fn, val_fn, _ = _tiny_setup()
    before = [p.detach().clone() for p in net.parameters()]
    approx, _ = sn._second_order(val_fn, train_fn, list(net.parameters()), xi)
    assert torch.allclose(approx[0], exact, rtol=1e-3, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # weights put back bit for bit
    # xi = 0: exactly the first-order step
    net1, sn1, _, val1, _ = _tiny_setup()
    sn1.arch_step(val1)
    net2, sn2, train2, val2, _ = _tiny_setup()
    sn2.arch_step(val2, train_loss_fn=train2, weights=list(net2.parameters()), xi=0.0)
    assert torch.allclose(sn1.alpha["op"], sn2.alpha["op"], atol=1e-7)


def test_second_order_darts_in_a_fit(tmp_path, digits):
    nas = DifferentiableNAS(order=2, seed=0, ablation_batches=0)
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, callbacks=[nas]).fit(
        Classifier(SmallSpace()), datamodule=digits
    )
    assert float(nas._supernet.alpha["b1"].abs().max()) > 0
    with pytest.raises(ValueError, match="order"):
        DifferentiableNAS(mode="gdas", order=2)
    with pytest.raises(ValueError, match="order"):
        DifferentiableNAS(order=3)


def test_mixed_op_weighted_sum_and_folded_aux_skip_match_the_formula():
    from lightning_nas.search.oneshot import Supernet

    torch.manual_seed(0)
    net = SmallSpace()
    net.train()
    x = torch.randn(4, 8, 6, 6)
    ops = {n: net.b1.candidates[n] for n in ("conv3", "conv1", "skip")}
    sn = Supernet(net, "darts", remedy="darts-")
    with torch.no_grad():
        sn.alpha["b1"].copy_(torch.tensor([0.5, -0.3, 0.1]))
    w = torch.softmax(sn.alpha["b1"].detach(), 0)
    for beta in (0.0, 0.7):  # DARTS-: beta * x folded into the skip candidate's weight
        sn.aux_beta = beta
        want = sum(wi * ops[n](x) for wi, n in zip(w, ("conv3", "conv1", "skip"))) + beta * x
        torch.testing.assert_close(net.b1(x), want)
    sn.arch_grad = True  # the gradient to alpha is the plain DARTS one (the aux skip carries none)
    g = torch.autograd.grad(net.b1(x).square().sum(), sn.alpha["b1"])[0]
    a = sn.alpha["b1"].detach().clone().requires_grad_(True)
    ref = sum(wi * ops[n](x) for wi, n in zip(torch.softmax(a, 0), ("conv3", "conv1", "skip"))) + 0.7 * x
    torch.testing.assert_close(g, torch.autograd.grad(ref.square().sum(), a)[0])


def test_spos_fair_sampling_trains_every_candidate_equally_and_resumes():
    from lightning_nas.search.oneshot import Supernet

    counts = {}
    for sampling in ("fair", "uniform"):
        sn = Supernet(SmallSpace(), "spos", sampling=sampling, seed=3)
        c = {lb: [0] * len(sn.names[lb]) for lb in sn.labels}
        for _ in range(12):  # 12 steps: 4 rounds of b1's 3 candidates, 6 of b2's 2
            sn.resample()
            for lb in sn.labels:
                c[lb][sn.path[lb]] += 1
        counts[sampling] = c
    assert counts["fair"] == {"b1": [4, 4, 4], "b2": [6, 6]}
    sn = Supernet(SmallSpace(), "spos", seed=5)
    for _ in range(4):
        sn.resample()
    state = sn.state_dict()
    ahead = [(sn.resample(), dict(sn.path))[1] for _ in range(5)]
    again = Supernet(SmallSpace(), "spos", seed=0)
    again.load_state_dict(state)
    assert [(again.resample(), dict(again.path))[1] for _ in range(5)] == ahead
    with pytest.raises(ValueError, match="sampling"):
        SubnetSampling(sampling="roundrobin")


class _BackboneHeadWithBN(L.LightningModule):
    """A backbone + head written as users do, a choice between BatchNorm'd blocks inside the backbone."""

    def __init__(self):
        super().__init__()
        import torch.nn as nn

        def block(cin, cout, k):
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.backbone = nn.Sequential(
            block(1, 16, 3),
            space.LayerChoice({"c3": block(16, 32, 3), "c5": block(16, 32, 5), "c1": block(16, 32, 1)}, label="b2"),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.head(self.backbone(x).flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: DifferentiableNAS(), lambda: SubnetSampling()], ids=["darts", "spos"])
def test_best_model_reestimates_batchnorm_for_the_exported_path(tmp_path, digits, make):
    """The supernet's BatchNorm statistics mix every candidate's activations (SPOS even leaves the last scored
    subnet's): measured 0.60 -> 0.76 (DARTS) and 0.12 -> 0.64 (SPOS) validation accuracy after 40 steps."""
    L.seed_everything(0)
    module, nas = _BackboneHeadWithBN(), make()
    fast_trainer(tmp_path, max_steps=40, callbacks=[nas]).fit(module, datamodule=digits)
    xv, yv = digits.split("val").tensors

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            return float((model.head(model.backbone(xv).flatten(1)).argmax(1) == yv).float().mean())

    before = {k: v.clone() for k, v in module.state_dict().items()}
    nas.recalibrate_bn = False
    stale = accuracy(nas.best_model())
    nas.recalibrate_bn = True
    fresh = accuracy(nas.best_model())
    assert fresh > stale + 0.1, (stale, fresh)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # only the copy is recalibrated
