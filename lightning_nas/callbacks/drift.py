"""DriftMonitor: check new data against a bundle's reference profile during ``trainer.validate``/``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_int, check_type
from lightning_nas.callbacks._capture import StepRecord, call_scores
from lightning_nas.callbacks._route import Route, split_input
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.deploy.drift import DriftReport, DriftThresholds, check_drift
from lightning_nas.deploy.profile import ReferenceProfile, attribution_share

STAGES = ("validate", "predict", "test", "fit")


class _RouteScores(torch.nn.Module):
    """``x -> (batch, classes)`` through the route the step runs (for attribution drift)."""

    def __init__(self, module: L.LightningModule, route: Route) -> None:
        super().__init__()
        self.module, self.route = module, route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route.logits(self.module, ((x,), {}))


def _load_reference(reference: str | Path | ReferenceProfile) -> ReferenceProfile:
    if isinstance(reference, ReferenceProfile):
        return reference
    check_type("reference", reference, (str, Path))
    p = Path(reference)
    if p.is_dir():
        from lightning_nas.deploy.bundle import load_bundle

        prof = load_bundle(p).profile()
        if prof is None:
            raise ValueError(f"`reference` bundle {str(p)!r} has no reference profile; bundle it with reference_data")
        return prof
    if not p.is_file():
        raise ValueError(
            f"`reference` must be a bundle folder, a profile.json or a ReferenceProfile; {str(p)!r} does not exist"
        )
    return ReferenceProfile.load(p)


class DriftMonitor(LightningNASCallback):
    """Compare the inputs, predictions and attributions of an evaluation loop with a reference profile.

    The inputs are what the model receives (the first tensor the user's step passes to the module it calls, after
    the step's own resizing, normalising or key picking: the inputs the bundle's model and its reference profile
    describe) and the predictions its output; at epoch end the monitor computes
    ``deploy.check_drift`` (PSI and KS per feature, prediction PSI, attribution shift from Integrated
    Gradients on the last ``attribution_samples`` inputs), logs it, warns, and raises a W&B alert
    (``run.alert``) when drift is declared. The latest report is ``monitor.last_report``.

    Args:
        reference: a bundle folder (its ``profile.json``, hash-checked), a profile JSON path, or a
            ``ReferenceProfile``.
        thresholds: ``DriftThresholds`` or a dict of its fields (``psi``, ``ks_alpha``, ``prediction_psi``,
            ``attribution_shift``, ``min_drifted_features``, ``research_fraction``, ``min_samples``).
        stages: loops to watch, from ``"validate"``, ``"predict"``, ``"test"``, ``"fit"`` (the validation
            loop inside ``fit``; sanity checks are skipped).
        max_samples: inputs kept per check (the first ones of the epoch).
        attribution_samples: inputs attributed per check (0: no attribution drift).
        input_index: an override: take the input from the raw batch instead, at this index of a tuple/list
            batch or this key of a dict batch (``None``: what the model receives).
        alert: raise a W&B alert when drift is declared (never fails the run).

    Logged: ``drift/psi_max``, ``drift/ks_max``, ``drift/prediction_psi``, ``drift/attribution_shift``,
    ``drift/drifted_features``, ``drift/detected`` (scalars); ``drift/features`` (table: feature, psi, ks,
    ks_pvalue, drifted); summary ``drift/verdict`` and ``drift/next_step``.

    Examples:
        Profile the model's inputs and predictions once (a bundle does it for you), then watch a validation loop:

        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import DriftMonitor
        >>> from lightning_nas.data import DigitsDataModule, load_digits_arrays
        >>> from lightning_nas.deploy import ReferenceProfile
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> model = Classifier(DigitsCNN(width=4)).eval()
        >>> x, _ = load_digits_arrays()
        >>> profile = ReferenceProfile.from_data(model, torch.as_tensor(x[:200]), attribution_samples=0)
        >>> monitor = DriftMonitor(profile, attribution_samples=0)
        >>> trainer = L.Trainer(limit_val_batches=2, logger=False, enable_progress_bar=False,
        ...     enable_model_summary=False, default_root_dir=tempfile.mkdtemp(), callbacks=[monitor])
        >>> _ = trainer.validate(model, datamodule=DigitsDataModule(), verbose=False)
        >>> monitor.last_report.status  # the same data as the reference: no drift
        'ok'
    """

    _state_attrs = ("history",)

    def __init__(
        self,
        reference: str | Path | ReferenceProfile,
        thresholds: DriftThresholds | dict[str, Any] | None = None,
        stages: list[str] | tuple[str, ...] = ("validate", "predict"),
        max_samples: int = 4096,
        attribution_samples: int = 64,
        input_index: int | str | None = None,
        alert: bool = True,
    ) -> None:
        super().__init__()
        self.thresholds = DriftThresholds.coerce(thresholds)
        check_type("stages", stages, (list, tuple))
        if not stages:
            raise ValueError(f"`stages` must name at least one of {list(STAGES)}, got {stages!r}")
        for s in stages:
            if s not in STAGES:
                raise ValueError(f"`stages` entries must be in {list(STAGES)}, got {s!r}")
        check_int("max_samples", max_samples, 2)
        check_int("attribution_samples", attribution_samples, 0)
        check_type("input_index", input_index, (int, str), allow_none=True)
        check_type("alert", alert, bool)
        self.profile = _load_reference(reference)
        self.stages, self.max_samples = tuple(stages), max_samples
        self.attribution_samples, self.input_index, self.alert = attribution_samples, input_index, alert
        self.history: list[dict[str, Any]] = []
        self.last_report: DriftReport | None = None
        self._x: list[torch.Tensor] = []  # kept on the model's device until the loop ends: no host sync per step
        self._classes: list[torch.Tensor] = []
        self._n = 0
        self._route: Route | None = None
        self._single_input = True

    # ------------------------------------------------------------------ collection
    def _stage(self, trainer: L.Trainer, loop: str) -> str | None:
        if trainer.sanity_checking:
            return None
        stage = "fit" if (loop == "validate" and trainer.state.fn == "fit") else loop
        return stage if stage in self.stages else None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if self.input_index is None:
            self._route_scorer = None
            self.model_io(trainer, pl_module).listen(self, "eval", self._on_step)
        super().setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.release_model_io(pl_module)

    def _check_shape(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.profile.input_shape:
            raise ValueError(
                f"DriftMonitor: inputs of shape {tuple(x.shape[1:])} do not match the reference "
                f"profile's input shape {self.profile.input_shape}: the reference profile has no "
                "entry for these features (was it made for another model?)"
            )
        return x

    def _input(self, batch: Any) -> torch.Tensor:
        """The ``input_index`` override: the input from the raw batch."""
        x = batch
        if isinstance(batch, (list, tuple)):
            if not isinstance(self.input_index, int) or self.input_index >= len(batch):
                raise ValueError(
                    f"DriftMonitor: `input_index`={self.input_index!r} does not index a batch of {len(batch)} items"
                )
            x = batch[self.input_index]
        elif isinstance(batch, dict):
            if self.input_index not in batch:
                raise ValueError(
                    f"DriftMonitor: `input_index`={self.input_index!r} is not a key of the batch ({sorted(batch)})"
                )
            x = batch[self.input_index]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"DriftMonitor: the batch input must be a tensor, got {type(x).__name__}")
        return self._check_shape(x)

    def _keep(self, x: torch.Tensor, scores: torch.Tensor) -> None:
        x = x[: self.max_samples - self._n]
        self._x.append(x.detach().float().clone())
        self._classes.append(scores[: len(x)].detach().argmax(1))
        self._n += len(x)

    def _on_step(self, record: StepRecord) -> None:
        """What the model received and returned in an evaluation step (the default)."""
        loop = {"validation_step": "validate", "test_step": "test", "predict_step": "predict"}[record.step]
        if not self._stage(self._trainer, loop) or not record.calls or self._n >= self.max_samples:
            return
        call = record.calls[0]
        x, rest, _ = split_input(call.args, call.kwargs)
        scores = call_scores(call)
        if scores is None or not torch.is_floating_point(x):
            assert record.route is not None  # calls are recorded on a route
            raise ValueError(
                f"DriftMonitor: `{record.route.describe()}` does not give (batch, classes) scores for "
                "float inputs; pass `input_index=` to watch the raw batch"
            )
        self._route, self._single_input = record.route, not rest
        self._keep(self._check_shape(x), scores)

    def _collect(self, pl_module: L.LightningModule, outputs: Any, batch: Any) -> None:
        if self.input_index is None:
            return
        x = self._input(batch)
        if self._n >= self.max_samples:
            return
        scores = (
            outputs
            if isinstance(outputs, torch.Tensor)
            and outputs.ndim == 2
            and outputs.shape[0] >= len(x)
            and outputs.shape[1] == self.profile.num_classes
            else None
        )
        if scores is None:
            with torch.no_grad():
                scores = pl_module(x)
        self._keep(x, scores)

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._stage(trainer, "validate"):
            self._collect(pl_module, outputs, batch)

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._stage(trainer, "test"):
            self._collect(pl_module, outputs, batch)

    @override
    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._stage(trainer, "predict"):
            self._collect(pl_module, outputs, batch)

    # ------------------------------------------------------------------ check
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stage(trainer, "validate"):
            self._check(trainer, pl_module, "fit" if trainer.state.fn == "fit" else "validate")

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stage(trainer, "test"):
            self._check(trainer, pl_module, "test")

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stage(trainer, "predict"):
            self._check(trainer, pl_module, "predict")

    def _gathered(self, trainer: L.Trainer) -> tuple[np.ndarray, np.ndarray]:
        x = torch.cat(self._x).cpu().numpy() if self._x else np.zeros((0, *self.profile.input_shape), np.float32)
        c = torch.cat(self._classes).cpu().numpy() if self._classes else np.zeros((0,), np.int64)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (x, c))
            x = np.concatenate([p[0] for p in parts])[: self.max_samples]
            c = np.concatenate([p[1] for p in parts])[: self.max_samples]
        return x, c

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        x, classes = self._gathered(trainer)
        self._x, self._classes, self._n = [], [], 0
        report = None
        if trainer.is_global_zero:
            share = None
            if self.attribution_samples and len(x) and self.profile.data.get("attribution") is not None:
                with eval_mode(pl_module):
                    model = (
                        pl_module
                        if self.input_index is not None or self._route is None
                        else _RouteScores(pl_module, self._route).eval()
                        if self._single_input
                        else None
                    )
                    if model is not None:  # several model inputs: no attribution over the one watched
                        share = attribution_share(model, x[-self.attribution_samples :], self.profile.feature_mode)
            report = check_drift(self.profile, x, classes, share, self.thresholds)
        report = self._broadcast(trainer, report)
        self.last_report = report
        self.history.append(
            {
                "stage": stage,
                "status": report.status,
                "n_samples": report.n_samples,
                "next_step": report.next_step,
                "drifted_features": report.drifted_features,
                **report.metrics(),
            }
        )
        if report.status == "insufficient":
            rank_zero_warn(f"DriftMonitor: {report.verdict}")
            return
        tracker = self.tracker(trainer)
        tracker.log_scalars(report.metrics())
        cols, rows = report.table()
        tracker.log_table("drift/features", cols, rows)
        tracker.log_summary({"drift/verdict": report.verdict, "drift/next_step": report.next_step})
        if report.drifted:
            rank_zero_warn(f"DriftMonitor ({stage}): {report.verdict}")
            if self.alert and trainer.is_global_zero:
                self._alert(tracker, report)

    @staticmethod
    def _alert(tracker: Any, report: DriftReport) -> None:
        """W&B alert; offline runs and any W&B failure only warn (monitoring never fails the job)."""
        run = tracker.wandb_run
        if run is None:
            return
        try:
            run.alert(
                title=f"lightning_nas: drift detected (next step: {report.next_step})",
                text=report.verdict[:2000],
                level="WARN",  # wandb.AlertLevel.WARN's value (wandb's stubs do not declare AlertLevel)
            )
        except Exception as exc:
            rank_zero_warn(f"DriftMonitor: W&B alert not sent ({type(exc).__name__}: {exc})")

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_report = None


__all__ = ["DriftMonitor"]
