"""Issue 14's third-party matrix: every public callback, at its defaults, on LightningModules written the way
their authors write them (``tests/third_party/models/``), each cell checking that the job was done.

A cell is one of:
* a job: the callback's promise, checked by its outcome on the model the user's step really runs;
* a documented refusal (``REFUSALS``): a clear ``ValueError`` before the first training step;
* not applicable (``NOT_APPLICABLE``): the project gives the callback nothing to work on.

Cells that fail today are in ``EXPECTED_FAILURES`` (strict xfail, one line: what happens today), the one place
to edit when a fix lands: a fixed cell XPASSes, which fails the run until its entry is removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_nas import callbacks as C
from lightning_nas import space
from lightning_nas.deploy import ReferenceProfile
from tests.third_party._harness import Observed, Project, Sink, StepCounter, call, fit, n_params, run_user_step
from tests.third_party.projects import PROJECTS

pytestmark = pytest.mark.slow

CALLBACKS = [
    "StructuredPruning",
    "MagnitudePruning",
    "LowRankFactorization",
    "QuantizationAware",
    "KnowledgeDistillation",
    "AttributionMonitor",
    "DecisionPaths",
    "TrainingDynamics",
    "ArchitectureView",
    "DriftMonitor",
    "DifferentiableNAS",
    "SubnetSampling",
]

# Documented refusals: (project, callback) -> regex the ValueError's message must match, raised before step 1.
REFUSALS: dict[tuple[str, str], str] = {
    # README, search: "Manual optimization (automatic_optimization=False) is refused"
    ("manual_opt", "DifferentiableNAS"): r"(?i)manual|automatic_optimization",
    ("manual_opt", "SubnetSampling"): r"(?i)manual|automatic_optimization",
    # KD rewrites the loss the training_step returns; a manual step returns none to rewrite
    ("manual_opt", "KnowledgeDistillation"): r"(?i)manual|automatic_optimization",
    # a language model's labels are token sequences: explaining "the label" needs 1-D class labels
    ("demo_transformer", "AttributionMonitor"): r"1-D class labels.*target='pred'",
    ("demo_transformer", "DecisionPaths"): r"1-D class labels.*target='pred'",
}

NOT_APPLICABLE: dict[tuple[str, str], str] = {
    (
        "demo_transformer",
        "DriftMonitor",
    ): "the demo LM has no validation_step or usable predict_step: no loop for DriftMonitor to watch",
}

# What fails today, one line each. Edit here when a fix lands (a fixed cell XPASSes and fails the run).
# Value: (the exception the cell raises today, one line: the exact error or the wrong outcome). The type is checked
# (`xfail(raises=...)`), so a cell that starts failing differently is reported and its line stays true.
EXPECTED_FAILURES: dict[tuple[str, str], tuple[type[BaseException], str]] = {}


# ------------------------------------------------------------------------------------------------ baselines
@dataclass
class Baseline:
    module: L.LightningModule  # the project fitted without any callback
    val: Observed  # its own step on the validation data


_BASELINES: dict[str, Baseline] = {}


@pytest.fixture
def baseline(tmp_path_factory):
    def get(key: str) -> Baseline:
        if key not in _BASELINES:
            p = PROJECTS[key]
            d = tmp_path_factory.mktemp(f"baseline-{key}")
            module, *_ = fit(d, p, [])
            _BASELINES[key] = Baseline(module, run_user_step(module, p, tmp_path=d))
        return _BASELINES[key]

    return get


def _fresh_copy(p: Project, trained: L.LightningModule) -> L.LightningModule:
    m = p.build(False)
    m.load_state_dict(trained.state_dict())
    return m.eval()


# ------------------------------------------------------------------------------------------------ helpers
def _runs_its_step(module: L.LightningModule, p: Project, tmp_path) -> Observed:
    """The (compressed / searched) module still runs the user's own step and gives per-class scores."""
    obs = run_user_step(module, p, tmp_path=tmp_path)
    assert obs.logits, "the user's step never reached the module that gives the logits"
    ref_classes = obs.logits[0].shape[-1]
    for z in obs.logits:
        assert z.shape[-1] == ref_classes and torch.isfinite(z).all()
    return obs


def _weight_layers(module: nn.Module, obs: Observed, *, own_forward: bool = False) -> set[str]:
    """Weight layers (own >= 2-D ``weight``: conv, linear, embedding) of the model the step ran: those whose
    forward ran and, unless ``own_forward``, the ``out_proj`` of an ``nn.MultiheadAttention`` that ran (it
    uses that weight without calling ``out_proj``)."""
    mods = dict(module.named_modules())
    out = set()
    for n, m in mods.items():
        w = getattr(m, "weight", None)
        if not n or not isinstance(w, torch.Tensor) or w.ndim < 2:
            continue
        parent = n.rpartition(".")[0]
        used_by_parent = not own_forward and parent in obs.ran and isinstance(mods[parent], nn.MultiheadAttention)
        if n in obs.ran or used_by_parent:
            out.add(n)
    return out


def _resolve(module: nn.Module, name: str) -> str:
    """A layer name as a callback reported it -> the module's own ``named_modules`` name (exact, or the one
    name ending with it, should a callback name layers relative to the submodule it watched)."""
    names = [n for n, _ in module.named_modules()]
    if name in names:
        return name
    hits = [n for n in names if n.endswith("." + name)]
    assert len(hits) == 1, f"reported layer {name!r} is not (uniquely) a module of the model: {hits}"
    return hits[0]


def _subset_loader(p: Project, indices: list[int]) -> DataLoader:
    ds = p.val_loader().dataset
    return DataLoader(Subset(ds, list(indices)), batch_size=len(indices))


class _Shifted(Dataset):
    """The validation set, brightened by 0.3 (clipped to [0, 1]): a drift the profile must see."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        if isinstance(item, dict):
            return {**item, "image": (item["image"] + 0.3).clamp(0, 1)}
        x, y = item
        return (x + 0.3).clamp(0, 1), y


def _raw_inputs(p: Project, loader: DataLoader) -> torch.Tensor:
    return torch.cat([p.raw_input(b) for b in loader])


def _expect_refusal(tmp_path, p: Project, cb, pattern: str, searchable: bool = False) -> None:
    counter = StepCounter()
    with pytest.raises(ValueError, match=pattern):
        fit(tmp_path, p, [cb], searchable=searchable, counter=counter)
    assert counter.started == 0, "the refusal came after training had started"


def _make(name: str, p: Project, baseline) -> object:
    """The callback at its defaults, with only what it requires."""
    if name == "KnowledgeDistillation":
        return C.KnowledgeDistillation(p.teacher(baseline(p.key).module))
    if name == "DriftMonitor":
        return None  # built in its cell, from a reference profile
    return getattr(C, name)()


# ------------------------------------------------------------------------------------------------ the cells
def cell_StructuredPruning(p, cb, tmp_path, baseline):
    module, _, _, before = fit(tmp_path, p, [cb])
    after = n_params(module)
    assert after < before, f"parameters {before} -> {after}: nothing was physically removed"
    leftovers = [n for n, _ in [*module.named_parameters(), *module.named_buffers()] if n.endswith(("_orig", "_mask"))]
    assert not leftovers, f"masks instead of smaller layers: {leftovers[:4]}"
    _runs_its_step(module, p, tmp_path)


def cell_MagnitudePruning(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    assert all(isinstance(m.weight, nn.Parameter) for m in layers), "masks were not made permanent at fit end"
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros / total >= 0.45, f"only {zeros / total:.2f} of the conv/linear weights are zero (amount 0.5)"
    _runs_its_step(module, p, tmp_path)


def cell_LowRankFactorization(p, cb, tmp_path, baseline):
    module, _, _, before = fit(tmp_path, p, [cb])
    after = n_params(module)
    if after >= before:  # allowed only as a logged, documented skip of every layer
        tables = Sink(tmp_path).tables("lowrank/layers")
        assert tables, f"parameters {before} -> {after} and no `lowrank/layers` table says why"
        rows = tables[-1]["rows"]
        cols = tables[-1]["columns"]
        reason = next((i for i, c in enumerate(cols) if "skip" in c or "reason" in c), None)
        assert reason is not None and rows and all(r[reason] for r in rows), (
            f"parameters {before} -> {after}, but the table gives no skip reason: {cols} {rows[:2]}"
        )
    _runs_its_step(module, p, tmp_path)


def cell_QuantizationAware(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    int8 = cb.int8_model
    assert int8 is not None, "no int8 model at fit end"
    obs = run_user_step(module, p, tmp_path=tmp_path)  # the inputs the model really receives, and its outputs
    correct = n = 0
    with torch.no_grad():
        for inputs, z, y in zip(obs.inputs, obs.logits, obs.labels):
            q = call(int8, inputs)
            assert isinstance(q, torch.Tensor) and q.shape == z.shape, (
                f"int8_model(x) gives {getattr(q, 'shape', type(q))}, the float model {tuple(z.shape)}"
            )
            correct += int((q.reshape(-1, q.shape[-1]).argmax(-1) == y.reshape(-1)).sum())
            n += y.numel()
    acc8, acc_float = correct / n, baseline(p.key).val.accuracy
    after = (
        sum(int((z.reshape(-1, z.shape[-1]).argmax(-1) == y.reshape(-1)).sum()) for z, y in zip(obs.logits, obs.labels))
        / n
    )
    # the int8 model computes what the float model (the user's module after the fit) computes ...
    assert acc8 >= after - 0.02, f"int8 accuracy {acc8:.3f} vs the float weights after the QAT fit {after:.3f}"
    # ... and QAT did not wreck training: these fits are 20-30 steps, where fake quantization from the first step
    # costs a little convergence (demo_net: 0.907 vs 0.933); a collapse (0.10-0.66 before the recipe) fails here
    assert acc8 >= acc_float - 0.05, f"int8 accuracy {acc8:.3f} vs {acc_float:.3f} without QAT"


def cell_KnowledgeDistillation(p, cb, tmp_path, baseline):
    module, trainer, _, _ = fit(tmp_path, p, [cb])
    kd = trainer.callback_metrics.get("distill/kd_loss")  # logged through the module's own `self.log`
    assert kd is not None and math.isfinite(float(kd)) and float(kd) > 0, f"no KD term was added: {kd}"
    sink = Sink(tmp_path)
    if not p.has_validation:
        return
    # the student KD measured is the model the step runs: its agreement with the teacher is the real one
    logged = sink.scalars("distill/agreement")
    assert logged, "no `distill/agreement` logged"
    obs = run_user_step(module, p, tmp_path=tmp_path)
    teacher = p.teacher(baseline(p.key).module)  # the teacher's very weights, in a copy
    with torch.no_grad():
        t_preds = torch.cat(
            [call(teacher.eval(), i).reshape(-1, z.shape[-1]).argmax(-1) for i, z in zip(obs.inputs, obs.logits)]
        )
    real = float((obs.preds == t_preds).float().mean())
    assert abs(logged[-1] - real) <= 0.005, (
        f"KD reports agreement {logged[-1]:.3f}; the model the step runs agrees with the teacher at {real:.3f}"
    )


def cell_AttributionMonitor(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    logged = Sink(tmp_path).scalars("explain/attribution/probe_acc")
    assert logged, "no `explain/attribution/probe_acc` logged"
    idx = list(cb.probe.indices)
    obs = run_user_step(module, p, _subset_loader(p, idx), tmp_path=tmp_path)
    if cb.probe.y is not None:
        assert torch.equal(cb.probe.y.reshape(-1).cpu(), obs.all_labels), "the probe's labels are not its samples'"
    assert logged[-1] == pytest.approx(obs.accuracy, abs=1e-6), (
        f"the explained predictions score {logged[-1]:.2f} on the probe; the model's real ones {obs.accuracy:.2f}"
    )


def cell_DecisionPaths(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    tables = Sink(tmp_path).tables("explain/paths/ablation")
    assert tables and tables[-1]["rows"], "no `explain/paths/ablation` table"
    rows = tables[-1]["rows"]  # class, layer, channel, logit_drop; best first per class
    best = {}
    for c, layer, ch, drop in rows:
        best.setdefault(int(c), (layer, int(ch), float(drop)))
    loader = _subset_loader(p, list(cb.probe.indices))
    base = run_user_step(module, p, loader, tmp_path=tmp_path)
    y = base.all_labels
    mods = dict(module.named_modules())
    for c, (layer, ch, drop) in sorted(best.items()):
        name, _, call = layer.partition("#")  # "relu#1": the module's second call in a forward (documented)
        target = mods[_resolve(module, name)]
        seen, per_forward = [0], _calls_per_forward(module, p, _resolve(module, name)) if call else 1

        def zero(_m, _i, out, ch=ch, call=call, seen=seen, per_forward=per_forward):
            k, seen[0] = seen[0], seen[0] + 1
            if call and k % per_forward != int(call):
                return None
            out = out.clone()
            out[:, ch] = 0
            return out

        h = target.register_forward_hook(zero)
        try:
            ablated = run_user_step(module, p, loader, tmp_path=tmp_path)
        finally:
            h.remove()
        mask = y == c
        real = float(base.all_logits[mask, c].mean() - ablated.all_logits[mask, c].mean())
        assert real == pytest.approx(drop, abs=1e-3, rel=0.01), (
            f"class {c}: zeroing {layer}[{ch}] lowers the real logit by {real:.4f}, DecisionPaths says {drop:.4f}"
        )


def _calls_per_forward(module: nn.Module, p: Project, name: str) -> int:
    """How many times the module ``name`` runs in one forward of the user's step (counted on one batch)."""
    target = dict(module.named_modules())[name]
    count = [0]
    h = target.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        run_user_step(module, p, _subset_loader(p, [0]))
    finally:
        h.remove()
    return max(count[0], 1)


def _per_layer(keys: set[str], module: nn.Module, metric: str) -> dict[str, str]:
    """``dynamics/<layer>/<metric>`` keys -> {the module's own name for <layer>: key}."""
    pre, suf = "dynamics/", "/" + metric
    return {_resolve(module, k[len(pre) : -len(suf)]): k for k in keys if k.startswith(pre) and k.endswith(suf)}


def cell_TrainingDynamics(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    obs = run_user_step(module, p, tmp_path=tmp_path)
    sink = Sink(tmp_path)
    keys = sink.scalar_keys()
    logged, expected = set(_per_layer(keys, module, "weight_norm")), _weight_layers(module, obs)
    assert logged == expected, (
        f"dynamics describe {sorted(logged - expected)} not run by the step, miss {sorted(expected - logged)}"
    )
    grads = _per_layer(keys, module, "grad_norm")
    for name in sorted(expected):
        values = sink.scalars(grads[name]) if name in grads else []
        assert values and max(values) > 0, f"no gradient norm logged for {name}: {values}"
    acts = {n for n, r in obs.layers.items() if r["type"] in ("ReLU", "ReLU6", "LeakyReLU", "ELU")}
    dead = set(_per_layer(keys, module, "dead_fraction"))
    assert acts <= dead, f"dead units not watched for {sorted(acts - dead)}"


def cell_ArchitectureView(p, cb, tmp_path, baseline):
    module, *_ = fit(tmp_path, p, [cb])
    sink = Sink(tmp_path)
    tables = sink.tables("explain/architecture/layers")
    assert len(tables) >= 2, "no layer table at fit start and end"
    cols, rows = tables[-1]["columns"], tables[-1]["rows"]
    by_name = {_resolve(module, r[cols.index("name")]): r for r in rows}
    obs = run_user_step(module, p, tmp_path=tmp_path)
    for name in sorted(_weight_layers(module, obs, own_forward=True)):
        assert name in by_name, f"{name} runs in the step but is not in the layer table"
        shown = str(by_name[name][cols.index("in_shape")]).split(",")[0].strip().split("x")[1:]
        real = [str(s) for s in obs.layers[name]["in"][1:]]
        assert shown == real, f"{name}: the table shows input {shown}, the step feeds it {real}"
    params = sink.scalars("explain/architecture/params")
    assert params and params[-1] == n_params(module), f"params {params[-1:]} vs the model's {n_params(module)}"
    macs = sink.scalars("explain/architecture/macs")
    assert macs and macs[-1] > 0, f"MACs logged: {macs}"


def cell_DriftMonitor(p, cb, tmp_path, baseline):
    model = _fresh_copy(p, baseline(p.key).module)
    # the reference describes what the model receives (as a bundle of the model does): the inputs the user's own
    # step gives it on the training data, and the model's scores on them (the library's public API)
    obs = run_user_step(model, p, loader=p.ref_loader(), tmp_path=tmp_path / "ref")
    ref = torch.cat([args[0] for args, _ in obs.inputs])
    profile = ReferenceProfile.from_data(p.teacher(model), ref)
    val = p.val_loader()
    reports = {}
    for kind, loader in {"clean": val, "shifted": DataLoader(_Shifted(val.dataset), batch_size=val.batch_size)}.items():
        monitor = C.DriftMonitor(profile)
        L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path / kind),
            callbacks=[monitor],
        ).validate(model, dataloaders=loader, verbose=False)
        reports[kind] = monitor.last_report
    assert reports["clean"] is not None and reports["clean"].status == "ok", (
        f"clean validation data: {getattr(reports['clean'], 'verdict', None)}"
    )
    assert reports["shifted"] is not None and reports["shifted"].status == "drift", (
        f"brightened data: {getattr(reports['shifted'], 'verdict', None)}"
    )


def _search_cell(p, cb, tmp_path, baseline):
    choices = space.choices(p.build(True))
    module, *_ = fit(tmp_path, p, [cb], searchable=True)
    arch = cb.export()
    assert set(arch) == set(choices) and all(arch[k] in choices[k] for k in arch), f"exported {arch} of {choices}"
    best = cb.best_model()
    assert space.choices(best) == {}, "best_model() still holds choices"
    _runs_its_step(best, p, tmp_path)


cell_DifferentiableNAS = cell_SubnetSampling = _search_cell


# ------------------------------------------------------------------------------------------------ the matrix
def _cells():
    for key in PROJECTS:
        for name in CALLBACKS:
            marks = []
            if (key, name) in EXPECTED_FAILURES:
                exc, reason = EXPECTED_FAILURES[(key, name)]
                marks.append(pytest.mark.xfail(strict=True, raises=exc, reason=reason))
            yield pytest.param(key, name, marks=marks, id=f"{key}-{name}")


@pytest.mark.parametrize(("project", "callback"), list(_cells()))
def test_cell(project, callback, tmp_path, baseline):
    p = PROJECTS[project]
    if (project, callback) in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[(project, callback)])
    cb = _make(callback, p, baseline)
    if (project, callback) in REFUSALS:
        _expect_refusal(
            tmp_path,
            p,
            cb,
            REFUSALS[(project, callback)],
            searchable=callback in ("DifferentiableNAS", "SubnetSampling"),
        )
        return
    globals()[f"cell_{callback}"](p, cb, tmp_path, baseline)


def test_the_lists_name_real_cells():
    """The expectation lists only name cells of the matrix (a typo would silently drop an expectation)."""
    cells = {(k, c) for k in PROJECTS for c in CALLBACKS}
    for table in (REFUSALS, NOT_APPLICABLE, EXPECTED_FAILURES):
        assert set(table) <= cells, set(table) - cells
    assert not set(NOT_APPLICABLE) & set(REFUSALS)
    assert set(C.__all__) >= set(CALLBACKS)
