"""Bad input, table-driven: every callback (constructor and model-dependent ``setup`` checks), ``search.run`` and
``deploy`` refuse a bad configuration with a clear error (type + a message naming the argument, the value and
what is allowed) BEFORE the first training step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from lightning_nas.callbacks import (
    ArchitectureView,
    AttributionMonitor,
    DecisionPaths,
    DifferentiableNAS,
    DriftMonitor,
    KnowledgeDistillation,
    LowRankFactorization,
    MagnitudePruning,
    QuantizationAware,
    StructuredPruning,
    SubnetSampling,
    TrainingDynamics,
)
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer
from tests.reliability.configs import SearchNet


class _FirstStep(L.Callback):
    """Records whether any training step began."""

    started = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        type(self).started = True


class _Manual(Classifier):
    def __init__(self, net):
        super().__init__(net)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


class _NoWeights(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10] * 1.0


class _NoWeightsModule(Classifier):
    def __init__(self):
        super().__init__(_NoWeights())
        self.dummy = nn.Parameter(torch.zeros(1))  # the optimizer needs one parameter

    def configure_optimizers(self):
        return torch.optim.SGD([self.dummy], lr=0.1)

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + 0 * self.dummy.sum()


def _mismatched_space():
    from lightning_nas import space

    net = SearchNet()
    net.b2 = space.LayerChoice({"conv3": nn.Conv2d(8, 4, 3, padding=1), "skip": nn.Identity()}, label="b2")
    module = Classifier(net)
    module.example_input_array = torch.zeros(2, 1, 8, 8)
    return module


def _fit(callbacks, module=None, **trainer_kwargs):
    """Fit one tiny epoch; the case's error must come before ``_FirstStep`` sees a batch. Lightning's own
    ``BoringModel`` (a module we did not write) brings its own data."""
    import tempfile

    opts = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    opts.update(trainer_kwargs)
    module = module if module is not None else Classifier(DigitsCNN(4))
    data = {} if isinstance(module, BoringModel) else {"datamodule": DigitsDataModule()}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = fast_trainer(tmp, callbacks=[*callbacks, _FirstStep()], **opts)
        trainer.fit(module, **data)


def _run(**kw):
    from lightning_nas.search import run

    args = dict(
        build=lambda t: Classifier(DigitsCNN(4)), datamodule=DigitsDataModule(), objectives="val_loss", n_trials=1
    )
    args.update(kw)
    return run(**args)


def _reference():
    return "/nonexistent/reference_profile.pt"


P = pytest.param
CASES = [
    # ---- DifferentiableNAS / SubnetSampling: constructor
    P(
        lambda: DifferentiableNAS(mode="enas"),
        ValueError,
        r"`mode` must be one of \['darts', 'gdas'\], got 'enas'",
        id="nas-mode",
    ),
    P(
        lambda: DifferentiableNAS(arch_lr=0.0),
        ValueError,
        r"`arch_lr` must be in \(0.0, 1.0\], got 0.0",
        id="nas-arch_lr",
    ),
    P(
        lambda: DifferentiableNAS(tau_max=1.0, tau_min=2.0),
        ValueError,
        r"`tau_min` must be in \(0.0, 1.0\], got 2.0",
        id="nas-tau_min",
    ),
    P(lambda: DifferentiableNAS(remedy="magic"), ValueError, r"`remedy` must be one of .*got 'magic'", id="nas-remedy"),
    P(lambda: DifferentiableNAS(order=3), ValueError, r"`order` must be one of \[1, 2\], got 3", id="nas-order"),
    P(
        lambda: DifferentiableNAS(mode="gdas", order=2),
        ValueError,
        r"`order`=2 .*needs mode='darts', got mode='gdas'",
        id="nas-order2-gdas",
    ),
    P(
        lambda: DifferentiableNAS(start_epoch=-1),
        ValueError,
        r"`start_epoch` must be in \[0, inf\), got -1",
        id="nas-warmup",
    ),
    P(lambda: DifferentiableNAS(seed=-5), ValueError, r"`seed` must be in \[0, inf\), got -5", id="nas-seed"),
    P(
        lambda: SubnetSampling(population=1),
        ValueError,
        r"`population` must be in \[2, inf\), got 1",
        id="spos-population",
    ),
    P(
        lambda: SubnetSampling(mutation_prob=1.5),
        ValueError,
        r"`mutation_prob` must be in \[0.0, 1.0\], got 1.5",
        id="spos-mutation",
    ),
    P(
        lambda: SubnetSampling(score_all="yes"),
        TypeError,
        r"`score_all` must be bool, got str 'yes'",
        id="spos-score_all",
    ),
    # ---- one-shot NAS: model checks in setup
    P(
        lambda: _fit([DifferentiableNAS()]),
        ValueError,
        r"DifferentiableNAS: Classifier has no LayerChoice/InputChoice",
        id="nas-no-choice",
    ),
    P(
        lambda: _fit([SubnetSampling()], _Manual(SearchNet())),
        ValueError,
        r"needs automatic optimization.*"
        r"automatic_optimization=True",
        id="spos-manual-opt",
    ),
    P(
        lambda: _fit([DifferentiableNAS()], _mismatched_space()),
        ValueError,
        r"choice 'b2': candidates produce different output shapes "
        r"\(conv3 -> \(2, 4, 8, 8\), skip -> \(2, 8, 8, 8\)\)",
        id="nas-shape-mismatch",
    ),
    P(
        lambda: _fit([SubnetSampling()], BoringModel()),
        ValueError,
        r"SubnetSampling: BoringModel has no "
        r"LayerChoice/InputChoice",
        id="spos-demo-no-choice",
    ),
    # ---- StructuredPruning
    P(lambda: StructuredPruning(amount=1.0), ValueError, r"`amount` must be in \[0.0, 1.0\), got 1.0", id="sp-amount"),
    P(
        lambda: StructuredPruning(amount="half"),
        TypeError,
        r"`amount` must be a float in \[0, 1\) or an int.*'half'",
        id="sp-amount-type",
    ),
    P(
        lambda: StructuredPruning(amount=2, global_pruning=True),
        ValueError,
        r"`amount`=2 .*global_pruning=True",
        id="sp-count-global",
    ),
    P(
        lambda: StructuredPruning(importance="random_forest"),
        ValueError,
        r"`importance` must be one of .*'random_forest'",
        id="sp-importance",
    ),
    P(
        lambda: StructuredPruning(importance="taylor", start_epoch=0),
        ValueError,
        r"`importance`='taylor'.*`start_epoch`"
        r".*>= 1, got 0",
        id="sp-taylor-epoch0",
    ),
    P(
        lambda: StructuredPruning(schedule="exponential"),
        ValueError,
        r"`schedule` must be one of .*'exponential'",
        id="sp-schedule",
    ),
    P(
        lambda: StructuredPruning(schedule="linear", start_epoch=3, end_epoch=1),
        ValueError,
        r"`end_epoch`=1 is before `start_epoch`=3",
        id="sp-end-before-start",
    ),
    P(
        lambda: StructuredPruning(start_step=2, start_epoch=1),
        ValueError,
        r"`start_step`=2 schedules in optimizer "
        r"steps: leave `start_epoch`",
        id="sp-step-and-epoch",
    ),
    P(lambda: StructuredPruning(round_to=0), ValueError, r"`round_to` must be in \[1, inf\), got 0", id="sp-round_to"),
    P(
        lambda: StructuredPruning(sensitivity_levels=[0.5, 1.0]),
        ValueError,
        r"`sensitivity_levels\[i\]` must be in "
        r"\(0.0, 1.0\), got 1.0",
        id="sp-sensitivity-levels",
    ),
    P(
        lambda: _fit([StructuredPruning(ignore=["net.*"])]),
        ValueError,
        r"no prunable layer in Classifier "
        r"after `ignore`=\['net.\*'\]",
        id="sp-ignore-everything",
    ),
    P(
        lambda: _fit([StructuredPruning(ignore=["layer"])], BoringModel()),
        ValueError,
        r"no prunable layer in BoringModel after `ignore`=\['layer'\] \(the output layer is never pruned\)",
        id="sp-demo-ignore",
    ),
    # ---- MagnitudePruning
    P(lambda: MagnitudePruning(amount=-0.1), ValueError, r"`amount` must be in \[0.0, 1.0\), got -0.1", id="mp-amount"),
    P(
        lambda: MagnitudePruning(make_permanent=1),
        TypeError,
        r"`make_permanent` must be bool, got int 1",
        id="mp-permanent",
    ),
    P(
        lambda: _fit([MagnitudePruning(ignore=["net"])]),
        ValueError,
        r"no Linear/Conv layer in Classifier after "
        r"`ignore`=\['net'\]",
        id="mp-ignore-everything",
    ),
    # ---- LowRankFactorization
    P(
        lambda: LowRankFactorization(energy=None),
        ValueError,
        r"give `energy` in \(0, 1\] or `budget` in \(0, 1\), got "
        r"both None",
        id="lr-none",
    ),
    P(
        lambda: LowRankFactorization(energy=1.5),
        ValueError,
        r"`energy` must be in \(0.0, 1.0\], got 1.5",
        id="lr-energy",
    ),
    P(
        lambda: LowRankFactorization(budget=1.0),
        ValueError,
        r"`budget` must be in \(0.0, 1.0\), got 1.0",
        id="lr-budget",
    ),
    P(
        lambda: LowRankFactorization(min_saving=1.0),
        ValueError,
        r"`min_saving` must be in \[0.0, 1.0\), got 1.0",
        id="lr-min_saving",
    ),
    P(
        lambda: _fit([LowRankFactorization(layers=["net.nope"])]),
        ValueError,
        r"`layers` \['net.nope'\] are not "
        r"Linear/Conv1d/Conv2d\(groups=1\) layers of Classifier; allowed: \['net.classifier', 'net.features.0'",
        id="lr-unknown-layer",
    ),
    # ---- QuantizationAware
    P(
        lambda: QuantizationAware(backend="tensorrt"),
        ValueError,
        r"`backend` must be one of .*'tensorrt'",
        id="qat-backend",
    ),
    P(
        lambda: QuantizationAware(start_epoch=-1),
        ValueError,
        r"`start_epoch` must be in \[0, inf\), got -1",
        id="qat-start",
    ),
    P(
        lambda: QuantizationAware(freeze_observers_after=0),
        ValueError,
        r"`freeze_observers_after` must be in \[1, inf\)"
        r", got 0",
        id="qat-freeze",
    ),
    P(
        lambda: QuantizationAware(ignore="net.0"),
        TypeError,
        r"`ignore` must be list or tuple, got str 'net.0'",
        id="qat-skip",
    ),
    P(
        lambda: _fit([QuantizationAware(module_name="backbone")]),
        ValueError,
        r"`module_name` 'backbone' is not a "
        r"submodule of Classifier; allowed: e.g. \['net'\]",
        id="qat-module_name",
    ),
    P(
        lambda: _fit([QuantizationAware()], _NoWeightsModule()),
        ValueError,
        r"no quantizable layer \(allowed: ",
        id="qat-no-layers",
    ),
    P(
        lambda: _fit([QuantizationAware(module_name="encoder")], BoringModel()),
        ValueError,
        r"`module_name` 'encoder' is not a submodule of BoringModel; allowed: e.g. \['layer'\]",
        id="qat-demo-module_name",
    ),
    # ---- KnowledgeDistillation
    P(
        lambda: KnowledgeDistillation(teacher=3),
        TypeError,
        r"`teacher` must be Module or str or .*Path, got int 3",
        id="kd-teacher-type",
    ),
    P(
        lambda: KnowledgeDistillation(DigitsCNN(4), temperature=0),
        ValueError,
        r"`temperature` must be in \(0.0, inf\),"
        r" got 0",
        id="kd-temperature",
    ),
    P(
        lambda: KnowledgeDistillation(DigitsCNN(4), alpha=1.2),
        ValueError,
        r"`alpha` must be in \[0.0, 1.0\], got 1.2",
        id="kd-alpha",
    ),
    P(
        lambda: KnowledgeDistillation("/nonexistent/teacher.ckpt", teacher_architecture=DigitsCNN(4)),
        ValueError,
        r"`teacher` checkpoint '/nonexistent/teacher.ckpt' does not exist",
        id="kd-missing-file",
    ),
    P(
        lambda: _fit([KnowledgeDistillation(DigitsCNN(4), features={"net.nope": "features.0"})]),
        ValueError,
        r"`features \(student layer\)` names 'net.nope', which is not a layer of Classifier; allowed: e.g. \['net'",
        id="kd-unknown-student-layer",
    ),
    P(
        lambda: _fit([KnowledgeDistillation(DigitsCNN(4))], _Manual(DigitsCNN(4))),
        ValueError,
        r"automatic optimization.*automatic_optimization is False",
        id="kd-manual-opt",
    ),
    P(
        lambda: _fit([KnowledgeDistillation(DigitsCNN(4), module_name="head")], BoringModel()),
        ValueError,
        r"`module_name`.*'head'.*BoringModel",
        id="kd-demo-module_name",
    ),
    # ---- explain callbacks
    P(lambda: AttributionMonitor(method="lime"), ValueError, r"`method` must be one of .*'lime'", id="attr-method"),
    P(lambda: AttributionMonitor(n_samples=0), ValueError, r"`n_samples` must be in \[1, .*got 0", id="attr-n_samples"),
    P(lambda: AttributionMonitor(target="logits"), ValueError, r"`target` must be one of .*'logits'", id="attr-target"),
    P(
        lambda: _fit([AttributionMonitor(method="grad_cam", layer="net.nope")]),
        ValueError,
        r"`layer`='net.nope' is not a module of Classifier; some that are: \['net'",
        id="attr-unknown-layer",
    ),
    P(
        lambda: TrainingDynamics(every_n_steps=0),
        ValueError,
        r"`every_n_steps` must be in \[1, inf\), got 0",
        id="dyn-every",
    ),
    P(lambda: TrainingDynamics(layers="net"), TypeError, r"`layers` must be list, got str 'net'", id="dyn-layers"),
    P(lambda: _fit([TrainingDynamics()], _NoWeightsModule()), ValueError, r"has no weight layers", id="dyn-no-layers"),
    P(lambda: DecisionPaths(top_k=0), ValueError, r"`top_k` must be in \[1, .*got 0", id="paths-top_k"),
    P(
        lambda: ArchitectureView(max_nodes=0),
        ValueError,
        r"`max_nodes` must be in \[1, inf\), got 0",
        id="view-max_nodes",
    ),
    # ---- DriftMonitor
    P(
        lambda: DriftMonitor(_reference()),
        ValueError,
        r"`reference` must be a bundle folder, a profile.json or a "
        r"ReferenceProfile; '/nonexistent/reference_profile.pt' does not exist",
        id="drift-reference",
    ),
    P(
        lambda: DriftMonitor(_reference(), max_samples=0),
        ValueError,
        r"`max_samples` must be in \[2, inf\), got 0",
        id="drift-max_samples",
    ),
    # ---- search.run
    P(
        lambda: _run(build=3),
        TypeError,
        r"`build` must be a callable trial -> LightningModule, got int",
        id="run-build",
    ),
    P(
        lambda: _run(datamodule=5),
        TypeError,
        r"`datamodule` must be a LightningDataModule or a callable.*got int",
        id="run-datamodule",
    ),
    P(lambda: _run(n_trials=0), ValueError, r"`n_trials` must be in \[1, inf\), got 0", id="run-n_trials"),
    P(lambda: _run(timeout=-1), ValueError, r"`timeout` must be in \(0.0, inf\), got -1", id="run-timeout"),
    P(
        lambda: _run(strategy="bayesian-magic"),
        ValueError,
        r"`strategy` must be one of \['random', "
        r".*or an optuna BaseSampler, got 'bayesian-magic'",
        id="run-strategy",
    ),
    P(
        lambda: _run(objectives={"val_loss": "up"}),
        ValueError,
        r"`objectives\['val_loss'\]` must be one "
        r"of \['maximize', 'minimize'\], got 'up'",
        id="run-objective-direction",
    ),
    P(
        lambda: _run(objectives={"val_loss": "min", "params": "min"}, pruner="median"),
        ValueError,
        r"`pruner`='median' needs a single objective",
        id="run-pruner-multiobjective",
    ),
    # ---- deploy
    P(
        lambda: __import__("lightning_nas.deploy", fromlist=["measure"]).measure("model", torch.zeros(1, 64)),
        TypeError,
        r"`model` must be a torch.nn.Module, got str",
        id="deploy-measure-model",
    ),
    P(
        lambda: __import__("lightning_nas.deploy", fromlist=["measure"]).measure(DigitsCNN(4), torch.zeros(1, 64)),
        ValueError,
        r"cannot run on example_input of shape",
        id="deploy-measure-shape",
    ),
    P(
        lambda: __import__("lightning_nas.deploy", fromlist=["measure"]).measure(
            DigitsCNN(4), torch.zeros(1, 1, 8, 8), repeats=0
        ),
        ValueError,
        r"`repeats` must be in \[1, inf\), got 0",
        id="deploy-measure-repeats",
    ),
    P(
        lambda: __import__("lightning_nas.deploy", fromlist=["export"]).export(
            DigitsCNN(4), torch.zeros(1, 1, 8, 8), "/tmp/x.tflite", format="tflite"
        ),
        ValueError,
        r"`format` must be one of .*'tflite'",
        id="deploy-export-format",
    ),
]


@pytest.mark.parametrize(("make", "exc", "match"), CASES)
def test_bad_input_fails_early_and_clearly(make, exc, match):
    _FirstStep.started = False
    with pytest.raises(exc, match=match):
        make()
    assert not _FirstStep.started, "the error came after a training step had begun"


def test_the_table_covers_every_callback():
    assert len(CASES) >= 40
    from lightning_nas import callbacks

    ids = " ".join(c.id for c in CASES)
    prefixes = {
        "DifferentiableNAS": "nas-",
        "SubnetSampling": "spos-",
        "StructuredPruning": "sp-",
        "MagnitudePruning": "mp-",
        "LowRankFactorization": "lr-",
        "QuantizationAware": "qat-",
        "KnowledgeDistillation": "kd-",
        "AttributionMonitor": "attr-",
        "TrainingDynamics": "dyn-",
        "DecisionPaths": "paths-",
        "ArchitectureView": "view-",
        "DriftMonitor": "drift-",
    }
    for name in callbacks.__all__:
        if name in prefixes:
            assert prefixes[name] in ids, name
