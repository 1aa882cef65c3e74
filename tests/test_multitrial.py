"""Multi-trial search: trial API, strategies, samplers, pruning, objectives, W&B explanation, bad input."""

from __future__ import annotations

import glob
import json

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from lightning_nas import space
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN
from lightning_nas.search import (
    STRATEGIES,
    RegularizedEvolutionSampler,
    ReinforceSampler,
    SearchTrial,
    StorageUnreachableError,
    TrialPruningCallback,
    run,
)
from lightning_nas.search.multitrial import find_duplicate, record_search_space

optuna.logging.set_verbosity(optuna.logging.ERROR)
TINY = dict(max_epochs=1, limit_train_batches=3, limit_val_batches=2)


@pytest.fixture(scope="module")
def dm():
    return DigitsDataModule(batch_size=64, seed=0)


def build_cnn(trial):
    return Classifier(DigitsCNN(trial.choice("width", [4, 8])), lr=trial.loguniform("lr", 1e-3, 3e-2))


class SpaceNet(nn.Module):
    """A user model with a LayerChoice and a ValueChoice (width read at construction)."""

    def __init__(self):
        super().__init__()
        w = space.ValueChoice([4, 8], label="width")
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.block = space.LayerChoice({"conv3": nn.Conv2d(w, w, 3, padding=1), "skip": nn.Identity()}, label="block")
        self.head = nn.Linear(w, 10)

    def forward(self, x):
        return self.head(torch.relu(self.block(torch.relu(self.stem(x)))).mean((2, 3)))


def build_space(trial):
    return Classifier(SpaceNet(), lr=trial.loguniform("lr", 1e-3, 3e-2))


# ---------------------------------------------------------------------------------------------- trial API
def test_search_trial_samples_within_bounds_and_validates():
    study = optuna.create_study()
    t = SearchTrial(study.ask())
    assert t.choice("act", ["relu", "gelu"]) in ("relu", "gelu")
    assert 0.1 <= t.uniform("p", 0.1, 0.5) <= 0.5
    assert 1e-4 <= t.loguniform("lr", 1e-4, 1e-1) <= 1e-1
    assert t.integer("n", 2, 8, step=2) in (2, 4, 6, 8)
    mod = t.choice("op", [nn.ReLU(), nn.Tanh()])  # non-primitive options go by their label
    assert isinstance(mod, (nn.ReLU, nn.Tanh)) and t.params["op"] in ("ReLU()", "Tanh()")
    assert t.choice("act", ["relu", "gelu"]) == t.params["act"]  # same name, same value
    with pytest.raises(ValueError, match="`options` is empty"):
        t.choice("empty", [])
    with pytest.raises(ValueError, match=r"low=0.9 > high=0.1"):
        t.uniform("bad", 0.9, 0.1)
    with pytest.raises(ValueError, match="`low` > 0"):
        t.loguniform("bad_log", 0.0, 1.0)
    with pytest.raises(ValueError, match="`step` must be >= 1"):
        t.integer("bad_step", 1, 4, step=0)


def test_dry_call_records_space_including_layer_and_value_choices():
    dists = record_search_space(build_space)
    assert set(dists) == {"width", "block", "lr"}
    assert list(dists["width"].choices) == [4, 8] and list(dists["block"].choices) == ["conv3", "skip"]


# ---------------------------------------------------------------------------------------------- samplers
def _toy(study_sampler, n, rewards, seed=0):
    study = optuna.create_study(direction="maximize", sampler=study_sampler)
    rng = np.random.RandomState(seed)

    def obj(t):
        a, b = t.suggest_categorical("a", list(range(5))), t.suggest_categorical("b", list(range(5)))
        return rewards[a, b] + 0.01 * rng.randn()

    study.optimize(obj, n_trials=n)
    return study


def test_reinforce_controller_learns_the_best_choice():
    rewards = np.add.outer(np.linspace(0, 1, 5), np.linspace(0, 0.5, 5))  # best: a=4, b=4
    sampler = ReinforceSampler(learning_rate=0.5, seed=0)
    study = _toy(sampler, 80, rewards)
    logits = sampler.policy(study, "a", study.trials[0].distributions["a"])
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert probs.argmax() == 4 and probs[4] > 0.5
    vals = [t.value for t in study.trials]
    assert np.mean(vals[-20:]) > np.mean(vals[:20]) + 0.2


def test_regularized_evolution_mutates_one_parameter_of_a_tournament_winner():
    rewards = np.add.outer(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    study = _toy(RegularizedEvolutionSampler(population_size=6, sample_size=3, seed=0), 40, rewards)
    children = [t for t in study.trials if "evolution" in t.system_attrs]
    assert len(children) >= 30  # everything after the first 6 completed trials is bred
    for child in children:
        parent = study.trials[child.system_attrs["evolution"]["parent"]]
        assert parent.number < child.number
        assert sum(parent.params[k] != child.params[k] for k in ("a", "b")) == 1
    vals = [t.value for t in study.trials]
    assert np.mean(vals[-10:]) > np.mean(vals[:6])


@pytest.mark.parametrize("cls", [RegularizedEvolutionSampler, ReinforceSampler])
def test_single_objective_samplers_refuse_several_objectives(cls):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=cls(seed=0))
    with pytest.raises(ValueError, match="nsga2"):
        study.optimize(lambda t: (t.suggest_categorical("a", [1, 2]), 0.0), n_trials=1)


# ---------------------------------------------------------------------------------------------- run()
@pytest.mark.slow
@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "grid"])  # grid: its own test below
def test_every_strategy_runs_the_joint_space(strategy, dm, tmp_path):
    objectives = {"val_acc": "maximize", "params": "minimize"} if strategy == "nsga2" else {"val_acc": "maximize"}
    res = run(
        build_space,
        dm,
        objectives=objectives,
        n_trials=3,
        strategy=strategy,
        seed=0,
        trainer_kwargs=TINY,
        out_dir=tmp_path,
        summary=False,
    )
    trials = res.study.trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    for t in trials:
        assert set(t.params) == {"width", "block", "lr"}
        assert "val_acc" in t.user_attrs["metrics"]
    assert res.best_trials and res.best_params.keys() == {"width", "block", "lr"}


def test_built_module_is_frozen_and_sized_by_the_sampled_value(dm, tmp_path):
    seen = []

    def build(trial):
        m = build_space(trial)
        seen.append(m)
        return m

    res = run(
        build,
        dm,
        objectives={"val_acc": "maximize", "params": "minimize"},
        n_trials=3,
        strategy="random",
        seed=1,
        trainer_kwargs=TINY,
        out_dir=tmp_path,
        summary=False,
    )
    # the fitted module has no choices left and its widths are the sampled ones
    for trial, module in zip(res.study.trials, seen[-3:]):
        assert not space.named_choices(module)
        assert module.net.stem.out_channels == trial.params["width"]
        assert isinstance(module.net.block, nn.Identity) == (trial.params["block"] == "skip")
    final = space.build(SpaceNet, {k: res.best_params[k] for k in ("width", "block")})  # the docs' last step
    assert not space.named_choices(final) and final.head.in_features == res.best_params["width"]


def test_grid_enumerates_the_whole_discrete_space(dm, tmp_path):
    def build(trial):
        return Classifier(SpaceNet(), lr=trial.choice("lr", [3e-3]))

    res = run(
        build,
        dm,
        objectives="val_acc",
        n_trials=10,
        strategy="grid",
        trainer_kwargs=TINY,
        out_dir=tmp_path,
        summary=False,
    )
    combos = {(t.params["width"], t.params["block"]) for t in res.study.trials if t.state.name == "COMPLETE"}
    assert combos == {(4, "conv3"), (4, "skip"), (8, "conv3"), (8, "skip")}
    with pytest.raises(ValueError, match="needs discrete hyperparameters"):
        run(build_space, dm, objectives="val_acc", n_trials=2, strategy="grid", out_dir=tmp_path)


def test_dedup_answers_a_repeated_configuration_from_the_study_without_a_fit(dm, tmp_path):
    import lightning as L

    fits = []

    class CountFits(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            fits.append(1)

    def build(trial):  # two configurations in all
        return Classifier(DigitsCNN(4), lr=trial.choice("lr", [1e-3, 3e-3]))

    res = run(
        build,
        dm,
        objectives="val_acc",
        n_trials=3,
        strategy="random",
        seed=0,
        dedup=True,
        trainer_kwargs=dict(TINY, callbacks=[CountFits()]),
        out_dir=tmp_path,
        summary=False,
    )
    trials = res.study.trials
    fitted = [t for t in trials if "duplicate_of" not in t.user_attrs]
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(fits) == len(fitted) == 2 and {t.params["lr"] for t in fitted} == {1e-3, 3e-3}
    assert len(dups) == 3  # the space is exhausted: the search ends after n_trials answers from the study
    for t in dups:
        orig = trials[t.user_attrs["duplicate_of"]]
        assert orig.number < t.number and orig.params == t.params and orig.values == t.values
        assert "duplicate_of" not in orig.user_attrs and t.user_attrs["metrics"] == orig.user_attrs["metrics"]
    assert find_duplicate(res.study, {"lr": 3e-3}).number in {t.number for t in fitted}
    assert find_duplicate(res.study, {"lr": 1e-2}) is None


def test_pruning_stops_bad_trials_through_the_callback(dm, tmp_path):
    kw = dict(max_epochs=3, limit_train_batches=2, limit_val_batches=2)
    res = run(
        build_cnn,
        dm,
        objectives={"val_acc": "maximize"},
        n_trials=4,
        strategy="random",
        seed=0,
        pruner=optuna.pruners.ThresholdPruner(lower=0.99),
        trainer_kwargs=kw,
        out_dir=tmp_path,
        summary=False,
    )
    states = [t.state.name for t in res.study.trials]
    assert states == ["PRUNED"] * 4  # no trial reaches 99% after 2 steps: all stopped at the first report
    assert all(t.user_attrs["pruned_at_validation"] == 0 for t in res.study.trials)
    assert all(list(t.intermediate_values) == [0] for t in res.study.trials)


def test_pruning_callback_on_an_unmodified_demo_model(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel, DemoModel

    from tests.helpers import fast_trainer

    study = optuna.create_study()
    for model, msg in (
        (DemoModel(), "DemoModel has no validation_step"),
        (BoringModel(), r"monitor 'val_loss' was not logged in validation; logged keys: \[\]"),
    ):
        cb = TrialPruningCallback(study.ask(), monitor="val_loss")
        trainer = fast_trainer(
            tmp_path, callbacks=[cb], limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0
        )
        with pytest.raises(ValueError, match=msg):
            trainer.fit(model, datamodule=BoringDataModule())


def test_costs_as_objectives_on_a_demo_model(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringDataModule, DemoModel

    res = run(
        lambda t: DemoModel(out_dim=t.choice("out_dim", [2, 16])),
        BoringDataModule(),
        objectives={"params": "minimize", "macs": "minimize"},
        n_trials=4,
        strategy="nsga2",
        seed=0,
        trainer_kwargs=dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0),
        out_dir=tmp_path,
    )
    for t in res.study.trials:
        assert t.values[0] == 32 * t.params["out_dim"] + t.params["out_dim"]  # measured Linear(32, d) params
    assert {t.params["out_dim"] for t in res.best_trials} == {2}


def test_multi_objective_pareto_front_and_wandb_explanation(dm, tmp_path):
    from lightning_nas.tracking import read_offline_run

    def build(trial):
        trial.uniform("dummy", 0.0, 1.0)  # a parameter nothing reads
        return build_cnn(trial)

    res = run(
        build,
        dm,
        objectives={"val_acc": "maximize", "latency_ms": "minimize"},
        n_trials=6,
        strategy="tpe",
        seed=0,
        trainer_kwargs=TINY,
        out_dir=tmp_path,
        wandb=True,
        study_name="mo",
    )
    done = [t for t in res.study.trials if t.state.name == "COMPLETE"]
    front = {t.number for t in res.best_trials}
    for t in res.best_trials:  # nobody dominates a front member
        assert not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)
    assert res.pareto_front[0]["values"].keys() == {"val_acc", "latency_ms"}
    summary_dir = res.summary_dir
    assert glob.glob(str(summary_dir / "images" / "search_pareto-*.png"))
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["search/n_complete"] == 6
    table = json.loads((summary_dir / "tables" / "search_trials.jsonl").read_text().splitlines()[-1])
    assert table["columns"] == ["number", "state", "dummy", "lr", "width", "val_acc", "latency_ms"]
    assert len(res.wandb_runs) == 7  # six trial runs and one summary run, in one group
    for run_dir, trial in zip(res.wandb_runs[:6], res.study.trials):
        _hist, summ, cfg = read_offline_run(run_dir)
        assert cfg["lr"] == pytest.approx(trial.params["lr"]) and cfg["width"] == trial.params["width"]
        assert summ["latency_ms"] == pytest.approx(trial.values[1]) and summ["state"] == "complete"
    _hist, summ, _cfg = read_offline_run(res.wandb_runs[-1])
    assert summ["search/n_complete"] == 6 and "search/importance" in summ and "search/pareto" in summ
    assert front <= {t.number for t in done}
    assert set(res.importance["latency_ms"]["fanova"]) == {"dummy", "lr", "width"}


def test_resume_continues_the_study(dm, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    kw = dict(
        objectives={"val_acc": "maximize"},
        strategy="tpe",
        storage=url,
        study_name="s",
        trainer_kwargs=TINY,
        out_dir=tmp_path,
        summary=False,
    )
    first = run(build_cnn, dm, n_trials=2, seed=0, **kw)
    assert len(first.study.trials) == 2
    second = run(build_cnn, dm, n_trials=4, seed=1, **kw)
    assert [t.state.name for t in second.study.trials] == ["COMPLETE"] * 4
    assert second.study.trials[0].params == first.study.trials[0].params
    third = run(build_cnn, dm, n_trials=4, seed=2, **kw)  # budget already spent: nothing runs
    assert len(third.study.trials) == 4
    with pytest.raises(ValueError, match="was created with objectives"):
        run(build_cnn, dm, n_trials=5, **dict(kw, objectives={"val_loss": "minimize"}))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly(dm, tmp_path):
    kw = dict(objectives={"val_acc": "maximize"}, n_trials=1, trainer_kwargs=TINY, out_dir=tmp_path, summary=False)
    with pytest.raises(TypeError, match="must return a lightning.LightningModule, got DigitsCNN"):
        run(lambda t: DigitsCNN(4), dm, **kw)
    with pytest.raises(ValueError, match=r"\['val_f1'\] were never logged.*logged keys: \[.*'val_acc'"):
        run(build_cnn, dm, **dict(kw, objectives={"val_f1": "maximize"}))
    with pytest.raises(ValueError, match=r"`strategy` must be one of \['random', 'grid'"):
        run(build_cnn, dm, strategy="hyperband", **kw)
    with pytest.raises(ValueError, match="strategy='evolution' optimises one objective"):
        run(build_cnn, dm, strategy="evolution", **dict(kw, objectives={"val_acc": "max", "params": "min"}))
    with pytest.raises(ValueError, match="`n_trials` must be in"):
        run(build_cnn, dm, **dict(kw, n_trials=0))
    with pytest.raises(TypeError, match="dedup"):
        run(build_cnn, dm, **dict(kw, dedup="yes"))
    with pytest.raises(ValueError, match=r"`objectives\['val_acc'\]` must be one of"):
        run(build_cnn, dm, **dict(kw, objectives={"val_acc": "up"}))
    with pytest.raises(ValueError, match="`options` is empty"):
        run(lambda t: Classifier(DigitsCNN(t.choice("w", []))), dm, **kw)
    with pytest.raises(ValueError, match="low=0.1 > high=0.001"):
        run(lambda t: Classifier(DigitsCNN(4), lr=t.loguniform("lr", 0.1, 0.001)), dm, **kw)
    with pytest.raises(ValueError, match="needs a single objective"):
        run(build_cnn, dm, pruner="median", **dict(kw, objectives={"val_acc": "max", "params": "min"}))
    with pytest.raises(ValueError, match="is not a storage URL"):
        run(build_cnn, dm, storage="redis://localhost", **kw)


def test_unreachable_storage_is_one_clear_line(dm, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kw = dict(objectives={"val_acc": "maximize"}, n_trials=1, out_dir=tmp_path)
    with pytest.raises(StorageUnreachableError) as err:
        run(build_cnn, dm, storage=f"postgresql://u:secret@127.0.0.1:{port}/db", **kw)
    msg = str(err.value)
    assert "is unreachable" in msg and "secret" not in msg and "u:***@" in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(StorageUnreachableError, match="is unreachable"):
        run(build_cnn, dm, storage=f"sqlite:///{tmp_path}/no/such/dir/x.db", **kw)
