"""``QuantizationAware``: quantization-aware training inside the user's own fit, ending in a real int8 model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_nas._validate import check_choice, check_int, check_range, check_type
from lightning_nas.callbacks._capture import EvalBatches, ModelIO
from lightning_nas.callbacks._route import Chain, Route
from lightning_nas.callbacks._structural import copy_module, install_restore_hook
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.compress import quantize as Q
from lightning_nas.explain.quant_sensitivity import SENSITIVITY_COLUMNS, SENSITIVITY_KEY, layer_sqnr, quant_sensitivity


class _Leaf(nn.Module):
    """Wraps a bare Conv/Linear so FX traces a call to it (a step that calls one layer, or ``module_name`` naming
    a leaf layer)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class QuantizationAware(LightningNASCallback):
    """Fake-quantize weights (per-channel int8) and activations (uint8) of the model the step runs during ``fit``,
    then convert it to a real int8 model: ``int8_model`` (torch, CPU) and ``export_onnx(path)`` (ONNX QDQ that
    ONNX Runtime runs as ``QLinearConv``/``QGemm``, dynamic batch).

    What is quantized is what ``training_step`` runs, whole: the module it calls (``self.model(x)``; a backbone then
    a head, each part; for ``self(x)``, every module the LightningModule's own ``forward`` runs, its code between
    them staying float), found in the first validation or training step (see "What the callbacks capture"). Each
    part is swapped for its FX QAT version (BatchNorm folded into the convs) before the next training step;
    parameters are shared, so the user's
    ``configure_optimizers`` and LR schedulers are untouched. A part torch.fx cannot trace is quantized through
    its children instead, and what stays float is named in a warning and in the summary
    (``quant/float_parts``). ``int8_model`` runs the parts in the same order, on the inputs the step gives the
    model. Before ``start_epoch`` the fake-quantizers are bypassed (plain float training). At ``teardown`` the
    user's float modules are put back (they hold the QAT-trained weights); the fake-quant model stays in
    ``qat_model``. With a pruning or low-rank callback in the same fit and ``start_epoch > 0``, the swap waits
    for ``start_epoch`` (so those change the float model first). A checkpoint saved after the swap swaps on load
    (after any pruning replay).

    The recipe (``compress.quantize.QATRecipe``, measured in BENCHMARKS.md "QAT recipe"): activation ranges are
    0.1 moving averages (torch's 0.01 lags behind the logits of a fit at the user's learning rate: they leave the
    range, are clipped, get no gradient, and the fit collapses), weight ranges are the current weights' exact
    per-channel min/max, and the first ``observer_warmup_steps`` QAT steps (at most half of an epoch's batches,
    so that a short fit still trains with fake quantization) only observe before fake quantization is switched
    on. It holds from epoch 0 (no float warm-up needed) and as a fine-tune. BatchNorm is not frozen by default:
    freezing it late broke fits at Adam 1e-2 and SGD 0.1 in the benchmark (``freeze_bn_after=0`` suits a
    fine-tune of a small trained model at a low learning rate, as in the demo).

    Divergence guard: the epoch-mean training loss (accumulated on the device, read once per epoch) of each QAT
    epoch is compared with a reference, the last float epoch's mean (or the first QAT epoch's when QAT starts
    the fit); a QAT epoch above ``divergence_factor`` x reference (a reference below 0.05 counts as 0.05), or not
    finite, has diverged: a warning with the numbers, ``quant/diverged`` = 1 and ``quant/loss_ratio`` logged,
    ``quant/divergence_*`` in the summary.

    Args:
        start_epoch: first epoch with fake quantization.
        freeze_observers_after: QAT epochs after which activation ranges stop moving (weight ranges too with
            ``recipe.freeze_weight_ranges``; ``None``: never).
        freeze_bn_after: QAT epochs after which folded BatchNorm statistics are frozen (``None``: never).
        recipe: how ranges follow the model (``QATRecipe()``; ``QATRecipe.torch_default()`` is torch's own).
        divergence_factor: QAT loss / reference ratio that counts as divergence (``None``: no guard).
        ignore: names of submodules kept float and untraced (full names in the LightningModule, e.g.
            ``"model.classifier"``, or names inside the quantized module).
        module_name: an override: the submodule of the LightningModule to quantize (``""``: the model the step
            runs, found from the first step).
        backend: ``"x86"`` or ``"fbgemm"`` (torch.ao quantized engine and qconfig).
        onnx_path: where rank zero writes the int8 ONNX model at the end of fit (optional).
        onnx_form: ``"qdq"`` compact portable QDQ graph, ``"fused"`` ONNX Runtime's fused QLinear graph
            (smallest; ONNX Runtime CPU only) or ``"raw"`` the exporter's output (see ``export_int8_onnx``).
        measure: measure size and batch latency of fp32 vs int8 in torch at fit end, and in ONNX Runtime when
            ``onnx_path`` is given (the export is then made anyway; ``export_onnx()`` after the fit otherwise).
        explain: log ``quant/<layer>/sqnr_db`` each validation epoch and the per-layer sensitivity table
            (``explain/sensitivity``) at fit end, on the first ``explain_batches`` validation batches (as the
            model receives them).
        explain_batches: validation batches used by the explanations.
        sensitivity_layers: the layers in the fit-end sensitivity table (one pass over ``explain_batches`` each):
            those with the lowest SQNR at the last validation first (``None``: every quantized layer).

    Logged: ``quant/<layer>/sqnr_db``; ``explain/sensitivity`` (columns layer, method, level, accuracy, drop);
    ``quant/diverged``, ``quant/loss_ratio`` (each QAT epoch after the reference); summary
    ``quant/divergence_epoch``, ``quant/divergence_loss``, ``quant/divergence_reference`` (first diverged epoch),
    ``quant/fp32_size_bytes``, ``quant/int8_size_bytes``, ``quant/size_ratio``, ``quant/fp32_latency_ms``,
    ``quant/int8_latency_ms``, ``quant/speedup``, ``quant/onnx_int8_latency_ms``, ``quant/float_parts``.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import QuantizationAware
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> qat = QuantizationAware(measure=False, explain=False)
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[qat])
        >>> trainer.fit(Classifier(DigitsCNN(width=8)), datamodule=DigitsDataModule())
        >>> int8 = qat.int8_model  # a real int8 model (torch.ao quantized modules), CPU
        >>> sorted({type(m).__name__ for m in int8.modules() if "quantized" in type(m).__module__})
        ['ConvReLU2d', 'Linear', 'LinearPackedParams']
        >>> int8(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> import os
        >>> qat.export_onnx(os.path.join(root, "model_int8.onnx")).name  # for ONNX Runtime (QLinearConv/QGemm)
        'model_int8.onnx'
    """

    _state_attrs = ("qat_steps", "targets", "warmup_steps", "last_float_loss", "loss_reference", "divergence")

    def __init__(
        self,
        start_epoch: int = 0,
        freeze_observers_after: int | None = None,
        freeze_bn_after: int | None = None,
        recipe: Q.QATRecipe | None = None,
        divergence_factor: float | None = 3.0,
        ignore: Sequence[str] = (),
        module_name: str = "",
        backend: str = "x86",
        onnx_path: str | None = None,
        onnx_form: str = "qdq",
        measure: bool = True,
        explain: bool = True,
        explain_batches: int = 2,
        sensitivity_layers: int | None = 4,
    ) -> None:
        super().__init__()
        self.start_epoch = check_int("start_epoch", start_epoch, 0)
        if freeze_observers_after is not None:
            check_int("freeze_observers_after", freeze_observers_after, 1)
        if freeze_bn_after is not None:
            check_int("freeze_bn_after", freeze_bn_after, 0)
        self.freeze_observers_after, self.freeze_bn_after = freeze_observers_after, freeze_bn_after
        self.recipe = Q.QATRecipe() if recipe is None else check_type("recipe", recipe, Q.QATRecipe)
        if divergence_factor is not None:
            check_range("divergence_factor", divergence_factor, 1.0, None, low_inclusive=False)
        self.divergence_factor = divergence_factor
        self.warmup_steps = self.recipe.observer_warmup_steps  # capped in on_train_start by the fit's length
        # divergence guard: the last float epoch's mean loss, the reference {"epoch", "loss"}, the first divergence
        self.last_float_loss: float | None = None
        self.loss_reference: dict[str, float] | None = None
        self.divergence: dict[str, float] | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self.ignore = list(check_type("ignore", ignore, (list, tuple)))
        for s in self.ignore:
            check_type("ignore[]", s, str)
        self.module_name = check_type("module_name", module_name, str)
        self.backend = check_choice("backend", backend, Q.BACKENDS)
        self.onnx_path = check_type("onnx_path", onnx_path, (str, Path), allow_none=True)
        self.onnx_form = check_choice("onnx_form", onnx_form, Q.ONNX_FORMS)
        self.measure, self.explain = check_type("measure", measure, bool), check_type("explain", explain, bool)
        self.explain_batches = check_int("explain_batches", explain_batches, 1)
        self.sensitivity_layers = (
            None if sensitivity_layers is None else check_int("sensitivity_layers", sensitivity_layers, 1)
        )
        self._sqnr: dict[str, float] = {}
        self.qat_steps = 0
        self.targets: list[str] = []  # the paths swapped for QAT models ("": the LightningModule's forward)
        self.float_parts: dict[str, str] = {}  # part of the route kept float -> why
        self.qat_model: nn.Module | None = None
        self.int8_model: nn.Module | None = None
        self.onnx_model: bytes | None = None
        self.measurements: dict[str, Any] = {}
        self._route: Route | None = None
        self._prepared: dict[str, nn.Module] = {}
        self._originals: dict[str, nn.Module] = {}
        self._pl: L.LightningModule | None = None
        self._eval = EvalBatches(explain_batches)

    @property
    def _lm(self) -> L.LightningModule:
        """The LightningModule ``setup`` saw (a clear error before it)."""
        if self._pl is None:
            raise RuntimeError("QuantizationAware: the module is known from `setup`, which has not run yet")
        return self._pl

    @property
    def _qat(self) -> nn.Module:
        """``qat_model``, for code that runs only after the swap."""
        if self.qat_model is None:
            raise RuntimeError("QuantizationAware: no QAT model yet (the swap happens at `start_epoch`)")
        return self.qat_model

    # ------------------------------------------------------------------ set-up: what to quantize
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._pl = pl_module
            io = self.model_io(trainer, pl_module)
            if self.explain:
                io.listen(self, "eval", self._eval)
            install_restore_hook(pl_module, self._replay)
        super().setup(trainer, pl_module, stage)

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = {n for n, _ in pl_module.named_modules()}
        if self.module_name:
            if self.module_name not in names:
                children = [n for n, _ in pl_module.named_children()]
                raise ValueError(
                    f"`module_name` {self.module_name!r} is not a submodule of "
                    f"{type(pl_module).__name__}; allowed: e.g. {children}"
                )
            self._route = Route((self.module_name,))
        for s in self.ignore:
            inside = self.module_name and f"{self.module_name}.{s}" in names
            if s not in names and not inside and not any(n.endswith("." + s) for n in names):
                raise ValueError(
                    f"`ignore` name {s!r} matches no submodule of {type(pl_module).__name__}; "
                    f"allowed: submodule names such as {sorted(n for n in names if n)[:12]}"
                )
        if not Q.quantizable_layers(pl_module, ()):
            raise ValueError(
                f"QuantizationAware: {type(pl_module).__name__} has no quantizable layer "
                f"(allowed: {[t.__name__ for t in Q.QUANTIZABLE]})"
            )
        if self._route is not None and not (self.start_epoch > 0 and _structural_callbacks(trainer)):
            self._swap(trainer, pl_module)  # known now: swap before the optimizer and any checkpoint load

    def _maybe_swap(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Swap when the route is known (from the first step) and it is time (``start_epoch`` behind pruning)."""
        if self.qat_model is not None:
            return
        if self._route is None:
            self._route = ModelIO.of(pl_module).route("train")
            if self._route is None:
                return  # no step ran yet: the first training step shows what the model is
        if self.start_epoch > 0 and _structural_callbacks(trainer) and trainer.current_epoch < self.start_epoch:
            return
        self._swap(trainer, pl_module)

    def _ignore_for(self, path: str) -> list[str]:
        """``ignore`` names relative to the module at ``path`` (full names, or names already inside it)."""
        return [s[len(path) + 1 :] if path and s.startswith(path + ".") else s for s in self.ignore]

    def _prepare(self, pl_module: L.LightningModule, path: str) -> tuple[dict[str, nn.Module], dict[str, str]]:
        """QAT models for ``path``: itself, or its children (recursively) when it is the LightningModule (its
        layer names stay valid for other callbacks) or torch.fx cannot trace it; and notes on what stays float."""
        module = pl_module.get_submodule(path) if path else pl_module
        target = _Leaf(module) if isinstance(module, Q.QUANTIZABLE) else module
        ignore = [s for s in self._ignore_for(path) if s in {n for n, _ in target.named_modules()}]
        if not Q.quantizable_layers(target, ignore):
            return {}, {}
        reason = "the LightningModule's forward is quantized through the parts it calls"
        if path:
            was = target.training
            try:
                return {path: Q.prepare_qat(target.train(), (), self.backend, ignore, self.recipe)}, {}
            except ValueError as exc:
                reason = str(exc).split(". Choose")[0]
            finally:
                target.train(was)
        ran = ModelIO.of(pl_module).ran
        prepared: dict[str, nn.Module] = {}
        notes: dict[str, str] = {}
        for name, child in module.named_children():
            full = f"{path}.{name}" if path else name
            if name.startswith(("_kd_", "_lightning_nas")) or (ran and full not in ran):
                continue  # added by another callback, or not run by the step
            if isinstance(child, Q.QUANTIZABLE) or Q.quantizable_layers(child):
                p, n = self._prepare(pl_module, full)
                prepared.update(p)
                notes.update(n)
        if path or not prepared:
            notes[path or "self"] = (
                f"quantized through its parts {sorted(prepared)}; its own forward code runs in float ({reason})"
                if prepared
                else f"stays float ({reason})"
            )
        return prepared, notes

    def _swap(self, trainer: L.Trainer, pl_module: L.LightningModule, paths: list[str] | None = None) -> None:
        if paths is None:
            assert self._route is not None  # found in the steps before the first swap
            prepared: dict[str, nn.Module] = {}
            notes: dict[str, str] = {}
            for path in self._route.paths:
                p, n = self._prepare(pl_module, path)
                prepared.update(p)
                notes.update(n)
            if not prepared:
                raise ValueError(
                    f"QuantizationAware: nothing to quantize in `{self._route.describe()}` "
                    f"({'; '.join(f'{k}: {v}' for k, v in notes.items()) or 'no Conv/Linear layer'})"
                )
        else:  # a checkpoint saved after the swap: the same paths, no search
            prepared = {p: self._prepare(pl_module, p)[0][p] for p in paths}
            notes = {}
        for path, qat in prepared.items():
            parent_name, _, attr = path.rpartition(".")
            parent = pl_module.get_submodule(parent_name) if parent_name else pl_module
            self._originals[path] = getattr(parent, attr)
            setattr(parent, attr, qat)
        self._prepared, self.targets, self.float_parts = prepared, list(prepared), notes
        self.qat_model = (
            next(iter(prepared.values()))
            if len(prepared) == 1
            else nn.ModuleDict({p.replace(".", "/"): m for p, m in prepared.items()})
        )
        if notes:
            rank_zero_warn("QuantizationAware: " + "; ".join(f"`{k}` {v}" for k, v in notes.items()))
        self._apply_schedule(trainer.current_epoch)

    def _uninstall(self, pl_module: L.LightningModule) -> None:
        for path, original in self._originals.items():
            parent_name, _, attr = path.rpartition(".")
            setattr(pl_module.get_submodule(parent_name) if parent_name else pl_module, attr, original)
        self._originals = {}

    def _replay(self, checkpoint: dict[str, Any]) -> list[tuple[float, Any]]:
        state = self._checkpoint_state(checkpoint) or {}
        if (
            self.qat_model is not None
            or not state.get("targets")
            or not _is_quantized(checkpoint.get("state_dict", {}))
        ):
            return []
        paths = list(state["targets"])
        return [(float("inf"), lambda: self._swap(self._trainer_of(), self._lm, paths))]

    def _trainer_of(self) -> L.Trainer:
        return self._lm.trainer

    # ------------------------------------------------------------------ schedule
    def _apply_schedule(self, epoch: int, training: bool = True) -> None:
        qat_epoch = epoch - self.start_epoch
        frozen_obs = self.freeze_observers_after is not None and qat_epoch >= self.freeze_observers_after
        recipe = dataclasses.replace(self.recipe, observer_warmup_steps=self.warmup_steps)
        # Before any QAT step, scales are uninitialised: fake quantization stays off even in validation.
        Q.apply_qat_schedule(
            self._qat,
            recipe,
            active=qat_epoch >= 0,
            qat_steps=self.qat_steps,
            observers_frozen=frozen_obs,
            training=training,
            bn_frozen=self.freeze_bn_after is not None and qat_epoch >= self.freeze_bn_after,
        )

    def _sync(self, trainer: L.Trainer) -> None:
        """Every rank takes rank zero's buffers: scales, zero-points, observer ranges and the BatchNorm statistics
        that get folded (DDP syncs gradients, not buffers after the last step), so the int8 models are identical."""
        if trainer.world_size <= 1:
            return
        names = {n for n, _ in self._qat.named_buffers()}
        own = {k: v.detach().cpu() for k, v in self._qat.state_dict().items() if k in names}
        self._qat.load_state_dict(self._broadcast(trainer, own), strict=False)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Epochs shorter than the warm-up: observe for at most half of an epoch, then fake-quantize.
        batches = trainer.num_training_batches
        if self.qat_steps == 0 and batches != float("inf"):
            self.warmup_steps = min(self.recipe.observer_warmup_steps, int(batches) // 2)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_count = None, 0
        if self.qat_model is not None:
            self._apply_schedule(trainer.current_epoch)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_swap(trainer, pl_module)  # parameters are shared: the optimizer stays valid
        if (
            self.qat_model is not None
            and self.qat_steps == self.warmup_steps > 0
            and trainer.current_epoch >= self.start_epoch
        ):
            self._apply_schedule(trainer.current_epoch)  # observer warm-up over: fake quantization on

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.qat_model is not None and trainer.current_epoch >= self.start_epoch:
            self.qat_steps += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.divergence_factor is not None and isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())  # summed on the device: no host sync per step
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loss_sum is None:
            return
        mean = float(trainer.strategy.reduce(self._loss_sum / self._loss_count, reduce_op="mean"))
        self._loss_sum, self._loss_count = None, 0
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            self.last_float_loss = mean
            return
        if self.loss_reference is None:
            ref_float = self.last_float_loss is not None
            self.loss_reference = {
                "epoch": epoch - 1 if ref_float else epoch,
                "loss": self.last_float_loss if self.last_float_loss is not None else mean,
            }
            if not ref_float:
                return
        ref, factor = self.loss_reference["loss"], self.divergence_factor
        assert factor is not None  # the loss is summed only with the guard on
        ratio = mean / max(ref, 1e-12)
        diverged = Q.loss_diverged(mean, ref, factor)
        tracker = self.tracker(trainer)
        tracker.log_scalars({"quant/diverged": float(diverged), "quant/loss_ratio": ratio})
        if diverged and self.divergence is None:
            self.divergence = {"epoch": epoch, "loss": mean, "reference": ref}
            tracker.log_summary({f"quant/divergence_{k}": v for k, v in self.divergence.items()})
            kind = "float" if self.loss_reference["epoch"] < self.start_epoch else "first QAT"
            rank_zero_warn(
                f"QuantizationAware: QAT diverged in epoch {epoch}: mean training loss {mean:.4g} > {factor:g} x "
                f"{ref:.4g}, the mean of {kind} epoch {self.loss_reference['epoch']} (ratio {ratio:.3g}). The int8 "
                "model will be poor: lower the learning rate for QAT, start QAT later (start_epoch), or keep the "
                "default QATRecipe (BENCHMARKS.md, QAT recipe)."
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # checkpoints from before the recipe and the guard hold only qat_steps
        defaults: dict[str, Any] = {
            "targets": [],
            "warmup_steps": self.recipe.observer_warmup_steps,
            "last_float_loss": None,
            "loss_reference": None,
            "divergence": None,
        }
        super().load_state_dict({**defaults, **state_dict})

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.qat_model is None:
            return
        self._sync(trainer)
        self._apply_schedule(trainer.current_epoch, training=False)  # observers off: no leak of val data

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.qat_model is None:
            return
        if (
            self.explain
            and not trainer.sanity_checking
            and self._eval.batches
            and trainer.current_epoch >= self.start_epoch
            and self.qat_steps > 0
        ):
            inputs = [move_data_to_device(x, pl_module.device) for x, _ in self._eval.batches]
            sqnr = self._per_part(lambda qat, fwd, full: layer_sqnr(qat, inputs, forward=fwd), pl_module, rows=False)
            self._sqnr = sqnr
            self.tracker(trainer).log_scalars({f"quant/{n}/sqnr_db": v for n, v in sqnr.items() if v != float("inf")})
        self._apply_schedule(trainer.current_epoch, training=True)

    def _per_part(self, fn: Any, pl_module: L.LightningModule, rows: bool) -> Any:
        """``fn(qat_part, forward, full)`` for every QAT part, the others' fake-quantizers off meanwhile; results
        merged with layer names made full (``model.features.0``, by ``full(name)``). ``forward(args, kwargs)`` runs
        the route's logits."""
        route = self._route or Route(tuple(self.targets))

        def forward(args: tuple, kwargs: dict) -> Any:
            return route.logits(pl_module, (args, kwargs))

        merged: Any = [] if rows else {}
        for path, qat in self._prepared.items():

            def full(n: str, path: str = path) -> str:
                return f"{path}.{n}" if path else n

            others = [m for p, m in self._prepared.items() if p != path]
            saved = [(m, m.fake_quant_enabled.clone()) for o in others for _, m in Q.fake_quant_modules(o)]
            try:
                for o in others:
                    Q.set_fake_quant(o, False)
                out = fn(qat, forward, full)
            finally:
                for m, flag in saved:
                    m.fake_quant_enabled.copy_(flag)
            if rows:
                merged += [[full(r[0]), *r[1:]] for r in out]
            else:
                merged.update({full(n): v for n, v in out.items()})
        return merged

    def _sensitivity_choice(self) -> set[str] | None:
        """The ``sensitivity_layers`` layers with the lowest SQNR at the last validation (in model order when
        none was measured), or ``None`` for every layer."""
        if self.sensitivity_layers is None:
            return None
        names = [f"{p}.{n}" if p else n for p, qat in self._prepared.items() for n in Q.qat_layers(qat)]
        ranked = sorted(range(len(names)), key=lambda i: (self._sqnr.get(names[i], float("inf")), i))
        return {names[i] for i in ranked[: self.sensitivity_layers]}

    # ------------------------------------------------------------------ the end: int8
    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.qat_model is None or self.qat_steps == 0:
            return
        self._sync(trainer)
        Q.set_observers(self.qat_model, False)
        Q.refresh_weight_ranges(self.qat_model)  # the fake-quant model takes the final weights, as int8_model does
        Q.set_fake_quant(self.qat_model, True)
        tracker = self.tracker(trainer)
        labelled = [
            (move_data_to_device(x, pl_module.device), y.to(pl_module.device)) for x, y in self._eval.labelled()
        ]
        if self.explain and labelled:
            try:
                chosen = self._sensitivity_choice()
                rank_zero_info(
                    f"QuantizationAware: sensitivity of {len(chosen) if chosen else 'every'} quantized "
                    f"layer(s) on {len(labelled)} validation batch(es)"
                )
                rows = self._per_part(
                    lambda qat, fwd, full: quant_sensitivity(
                        qat,
                        labelled,
                        forward=fwd,
                        layers=None if chosen is None else [n for n in Q.qat_layers(qat) if full(n) in chosen],
                    ),
                    pl_module,
                    rows=True,
                )
                tracker.log_table(SENSITIVITY_KEY, SENSITIVITY_COLUMNS, rows)
            except Exception as exc:
                self.measurements["sensitivity_error"] = f"{type(exc).__name__}: {exc}"
        rank_zero_info("QuantizationAware: converting to int8" + (" and measuring" if self.measure else ""))
        self.convert()
        if self.float_parts:
            tracker.log_summary({"quant/float_parts": "; ".join(f"{k}: {v}" for k, v in self.float_parts.items())})
        if self.measure and self._example() is not None:
            self._measure(tracker)
        if self.onnx_path is not None and trainer.is_global_zero:
            self.export_onnx(self.onnx_path)

    def _example(self) -> tuple[torch.Tensor, ...] | None:
        """Positional example inputs of the int8 model (two samples, CPU), as the step fed the model."""
        ex = ModelIO.of(self._pl).example("train") if self._pl is not None else None
        if ex is None and self._example_cache is not None:
            return self._example_cache
        if ex is None or ex[1] or not all(isinstance(a, torch.Tensor) for a in ex[0]):
            return None
        self._example_cache = tuple(a.cpu() for a in ex[0])
        return self._example_cache

    _example_cache: tuple[torch.Tensor, ...] | None = None

    def convert(self) -> nn.Module:
        """The real int8 torch model of the current QAT state (also stored in ``int8_model``): the parts the step
        runs, in order, each converted (``Chain`` when there are several)."""
        if self.qat_model is None:
            raise RuntimeError("QuantizationAware.convert(): no QAT model yet; run trainer.fit first")
        route = self._route or Route(tuple(self.targets))
        self.int8_model = Chain.of([self._int8_part(path) for path in route.paths], route)
        self.onnx_model = None
        return self.int8_model

    def _int8_part(self, path: str) -> nn.Module:
        if path in self._prepared:
            return Q.convert_int8(self._prepared[path])
        # quantized through its children (or not at all): a CPU copy of the module, each QAT child converted
        inner = [p for p in self._prepared if not path or p.startswith(path + ".")]
        part = copy.deepcopy(self._lm.get_submodule(path)) if path else copy_module(self._lm, self)
        part = part.cpu().eval()
        for p in inner:
            rel = p[len(path) + 1 :] if path else p
            parent_name, _, attr = rel.rpartition(".")
            parent = part.get_submodule(parent_name) if parent_name else part
            setattr(parent, attr, Q.convert_int8(getattr(parent, attr)))
        return part

    def export_onnx(self, path: str | Path) -> Path:
        """Write the int8 ONNX model (``onnx_form``, dynamic batch axis) to ``path``; returns the path."""
        int8 = self.int8_model if self.int8_model is not None else self.convert()
        if self.onnx_model is None:
            example = self._example()
            if example is None:
                raise RuntimeError("QuantizationAware.export_onnx(): no positional tensor inputs were seen during fit")
            self.onnx_model = Q.export_int8_onnx(int8, tuple(a[:1] for a in example), form=self.onnx_form)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.onnx_model)
        return path

    def float_model(self) -> nn.Module:
        """The float model the step runs (the user's modules, with the QAT-trained weights), for comparisons."""
        route = self._route or Route(tuple(self.targets))
        return Chain.of(
            [self._lm if not p else self._originals.get(p, self._lm.get_submodule(p)) for p in route.paths], route
        )

    def _measure(self, tracker: Any) -> None:
        from lightning_nas.deploy.export import onnx_session
        from lightning_nas.deploy.measure import compare, time_call

        x = self._example()
        assert self.int8_model is not None and x is not None  # after convert(), with an example (on_train_end)
        c = compare(self.float_model(), self.int8_model, x, repeats=10)
        m = {
            "quant/fp32_size_bytes": c["reference_size_bytes"],
            "quant/int8_size_bytes": c["candidate_size_bytes"],
            "quant/size_ratio": c["size_ratio"],
            "quant/fp32_latency_ms": c["reference_latency_ms"],
            "quant/int8_latency_ms": c["candidate_latency_ms"],
            "quant/speedup": c["speedup"],
        }
        try:
            if self.onnx_path is not None:  # an export costs about a second on a ResNet-18: only when asked for
                if self.onnx_model is None:
                    self.onnx_model = Q.export_int8_onnx(self.int8_model, tuple(a[:1] for a in x), form=self.onnx_form)
                sess = onnx_session(self.onnx_model)
                feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), x)}
                m["quant/onnx_int8_latency_ms"] = time_call(lambda: sess.run(None, feeds), 10, 3)[0]
        except Exception as exc:
            self.measurements["onnx_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        self.measurements.update(m)
        tracker.log_summary(m)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._example()  # keep the example for export_onnx() after the fit
        self._uninstall(pl_module)  # the user's float modules, holding the QAT-trained weights
        self.release_model_io(pl_module)


def _structural_callbacks(trainer: L.Trainer) -> list[L.Callback]:
    from lightning_nas.callbacks.lowrank import LowRankFactorization
    from lightning_nas.callbacks.pruning import MagnitudePruning, StructuredPruning

    kinds = (StructuredPruning, MagnitudePruning, LowRankFactorization)
    callbacks = getattr(trainer, "callbacks", [])  # Lightning's callback connector sets it (undeclared on Trainer)
    return [cb for cb in callbacks if isinstance(cb, kinds)]


def _is_quantized(state_dict: dict[str, Any]) -> bool:
    """Whether a checkpoint's state dict holds the QAT model (saved after the swap)."""
    return any("fake_quant" in k or "activation_post_process" in k for k in state_dict)
