"""``StructuredPruning`` (channels physically removed) and ``MagnitudePruning`` (unstructured masks).

The algorithms live in ``lightning_nas.compress.prune``; these callbacks decide *when* (schedule), keep the
record needed to resume, rebuild the optimizer after a structural change, and keep DDP ranks identical
(rank 0 decides which channels go and broadcasts the decision; the other ranks replay it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_nas._modules import name_matches
from lightning_nas._validate import check_choice, check_int, check_range, check_type
from lightning_nas.callbacks._capture import EvalBatches
from lightning_nas.callbacks._route import ROOT, Route
from lightning_nas.callbacks._structural import (
    Schedule,
    copy_module,
    install_restore_hook,
    param_names,
    rebuild_optimizers,
    spawned,
)
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.compress import prune as P


class StructuredPruning(LightningNASCallback):
    """Remove whole channels (conv filters, Linear units, attention dims) during training, then fine-tune.

    Args:
        amount: fraction of channels to remove in ``[0, 1)`` (of each layer, or of all layers together when
            ``global_pruning``), or an int: channels to remove from every prunable layer.
        importance: ``"l1"``, ``"l2"`` (weight magnitude), ``"bn_scale"`` (BatchNorm ``|gamma|``) or
            ``"taylor"`` (first-order Taylor ``|w * dL/dw|``, gradients averaged since the last pruning).
        schedule: ``"one_shot"`` (everything at ``start_epoch``), ``"linear"``, or ``"cubic"``/``"agp"``
            (gradual, ``s_t = amount * (1 - (1 - p)^3)``) over ``start_epoch..end_epoch``.
        start_epoch: first pruning epoch.
        end_epoch: last pruning epoch of a gradual schedule (default ``start_epoch``).
        every_n_epochs: prune every this many epochs inside the range.
        start_step: first pruning optimizer step: give it to schedule in steps instead of epochs (the epoch
            arguments must then stay at their defaults).
        end_step: last pruning step of a gradual schedule (default ``start_step``).
        every_n_steps: prune every this many optimizer steps inside the range (default 1).
        global_pruning: rank channels across layers instead of removing ``amount`` from each layer.
        ignore: layer names (prefix or glob, e.g. ``"net.features.0"``, ``"*.downsample*"``) to keep whole.
            The output layer producing the logits is always kept, and so is any group whose pruning stops the
            model from running (a positional-encoding buffer of the embedding's width, a hard-coded ``view``):
            a dry run on a copy finds them before the fit trains (``compress.breaking_groups``), warns with
            their names and logs them as ``prune/kept_whole``; name them here to keep them whole silently.
        example_input: an override: input of the LightningModule's own ``forward`` for tracing. By default the
            model is traced on what the step really feeds it (the module ``training_step`` calls, with the inputs
            it receives, found in the first validation or training step; see "What the callbacks capture").
            Until then nothing is pruned: with no sanity check and no validation loop, pruning due at the first
            step happens at the second.
        round_to: keep channel counts multiples of this.
        explain: stream per-layer importance of removed vs kept channels.
        sensitivity_levels: if given (e.g. ``[0.1, 0.3, 0.5, 0.7, 0.9]``), before the first pruning measure the
            validation accuracy with each prunable layer alone pruned at each level (rank zero, on the
            trainer's validation loader) and log table ``explain/sensitivity`` and curves.

    Logged: ``prune/<layer>/channels``, ``prune/<layer>/sparsity`` (every epoch), ``prune/params``,
    table ``prune/importance`` and histograms ``prune/<layer>/importance_kept|removed`` (at each pruning), and
    the summary ``prune/kept_whole`` when groups had to be kept whole.

    Examples:
        Half the channels of every prunable layer physically removed (the logits layer is kept whole):

        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import StructuredPruning
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> model = Classifier(DigitsCNN(width=8))
        >>> model.net.features[0].out_channels, model.net.features[3].out_channels
        (8, 16)
        >>> prune = StructuredPruning(amount=0.5)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp(), callbacks=[prune])
        >>> trainer.fit(model, datamodule=DigitsDataModule())
        >>> model.net.features[0].out_channels, model.net.features[3].out_channels
        (4, 8)
    """

    _state_attrs = ("records", "done", "example", "route", "original_channels", "kept_whole")

    def __init__(
        self,
        amount: float | int = 0.5,
        importance: str = "l1",
        schedule: str = "one_shot",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        start_step: int | None = None,
        end_step: int | None = None,
        every_n_steps: int | None = None,
        global_pruning: bool = False,
        ignore: Sequence[str] = (),
        example_input: Any = None,
        round_to: int | None = None,
        explain: bool = True,
        sensitivity_levels: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"`amount` must be a float in [0, 1) or an int channel count, got {amount!r}")
        if isinstance(amount, int) and amount >= 1:
            check_int("amount", amount, 1)
            if global_pruning:
                raise ValueError(f"`amount`={amount} (a channel count) cannot be used with global_pruning=True")
        else:
            check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
        check_choice("importance", importance, P.IMPORTANCES)
        self.schedule = Schedule.of(
            schedule, start_epoch, end_epoch, every_n_epochs, start_step, end_step, every_n_steps
        )
        if importance == "taylor" and self.schedule.start == 0:
            raise ValueError(
                "`importance`='taylor' needs gradients from training: `start_epoch` (or start step) must be >= 1, got 0"
            )
        check_type("global_pruning", global_pruning, bool)
        if isinstance(ignore, str):
            ignore = [ignore]
        check_type("ignore", ignore, (list, tuple))
        if round_to is not None:
            check_int("round_to", round_to, 1)
        self.amount, self.importance, self.global_pruning = amount, importance, global_pruning
        self.ignore, self.round_to, self.explain = list(ignore), round_to, explain
        if sensitivity_levels is not None:
            check_type("sensitivity_levels", sensitivity_levels, (list, tuple))
            for lv in sensitivity_levels:
                check_range("sensitivity_levels[i]", lv, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        self.sensitivity_levels = None if sensitivity_levels is None else [float(v) for v in sensitivity_levels]
        self.sensitivity: list[list[Any]] = []
        self._given_example = example_input
        self.records: list[dict[str, Any]] = []  # [{"order", "event", "steps": [PruneStep dicts]}]
        self.done: list[int] = []
        self.example: tuple[tuple, dict] | None = None
        self.route: dict[str, Any] | None = None  # Route.to_state() of the route ``example`` goes through
        self._eval = EvalBatches(4)
        self.original_channels: dict[str, int] = {}
        self.kept_whole: list[str] = []  # roots of the groups whose pruning stops the model from running
        self._grad_sum: dict[str, torch.Tensor] = {}
        self._grad_n = 0

    # ------------------------------------------------------------------ set-up and validation
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pl_module = pl_module
        install_restore_hook(pl_module, self._replay_items)
        if stage == "fit":
            self._io = self.model_io(trainer, pl_module)
            self._io.on_route(self, lambda kind, route: self._route_found(trainer, pl_module))
            if self.sensitivity_levels:
                self._io.listen(self, "eval", self._eval)
        self._densify = False
        if stage == "fit" and spawned(trainer) and not hasattr(self, "_unpruned"):
            # ddp_spawn: the main process loads the final state_dict into its own unpruned module
            self._unpruned = copy_module(pl_module, self)
            pl_module.register_state_dict_post_hook(functools.partial(type(self)._dense_state_dict, self))
        super().setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._densify = stage == "fit" and hasattr(self, "_unpruned")
        if stage == "fit":
            self.release_model_io(pl_module)

    def _dense_state_dict(self, module: Any, state_dict: dict[str, Any], prefix: str, meta: Any) -> None:
        if not (self._densify and self.records) or prefix:
            return
        steps = [s for rec in self.records for s in rec["steps"]]
        state_dict.update(P.densify_state_dict(self._unpruned, steps, self.example, state_dict, self._fwd))

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = [n for n, m in pl_module.named_modules() if isinstance(m, P.ROOT_TYPES)]
        if not self.records and not [n for n in layers if not name_matches(n, self.ignore)]:
            raise ValueError(
                f"StructuredPruning: no prunable layer in {type(pl_module).__name__} after `ignore`="
                f"{self.ignore} (the output layer is never pruned)"
            )
        if self.example is None and self._given_example is not None:
            given = self._given_example
            self.example = (tuple(given), {}) if isinstance(given, (tuple, list)) else ((given,), {})
            self.route = ROOT.to_state()
        if self.example is not None:
            self._check_layers(pl_module, trainer)

    def _route_found(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The first step showed what the model receives: trace that, and check the model now."""
        if self.example is not None or trainer.state.fn != "fit":
            return
        route = self._io.route("train")
        assert route is not None  # this runs when the first step found it
        self.example, self.route = self._io.example("train"), route.to_state()
        self._check_layers(pl_module, trainer)

    @property
    def _ignore(self) -> list[str]:
        """``ignore``, and the groups the dry run found the model cannot run without."""
        return [*self.ignore, *self.kept_whole]

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({"kept_whole": [], **state_dict})  # checkpoints from before the dry run's finding

    @property
    def _fwd(self) -> Any:
        return Route.from_state(self.route).run if self.route else None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.example is not None:
            self._ensure_original(trainer, pl_module)

    def _ensure_original(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.original_channels:
            self.original_channels = P.prunable_layers(pl_module, self._ex(pl_module), self._ignore, self._fwd)
            self._log_state(trainer, pl_module)

    def _check_layers(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> None:
        layers = P.prunable_layers(pl_module, self._ex(pl_module), self._ignore, self._fwd)
        if not layers and not self.records:
            raise ValueError(
                f"StructuredPruning: no prunable layer in {type(pl_module).__name__} after `ignore`="
                f"{self.ignore} (the output layer is never pruned)"
            )
        if self.importance == "bn_scale" and not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()
        ):
            raise ValueError(
                f"`importance`='bn_scale' needs BatchNorm layers; {type(pl_module).__name__} has none "
                f"(use 'l1', 'l2' or 'taylor')"
            )
        if isinstance(self.amount, int) and self.amount >= 1 and not self.records:
            small = {n: c for n, c in layers.items() if c <= self.amount}
            if small:
                raise ValueError(
                    f"`amount`={self.amount} channels is not smaller than the channel count of "
                    f"{small}; use a smaller count, a fraction, or `ignore` those layers"
                )
        if not self.records and trainer is not None:
            self._dry_run(trainer, pl_module, layers)

    def _dry_run(self, trainer: L.Trainer, pl_module: L.LightningModule, layers: dict[str, int]) -> None:
        """Prune a copy at the final amount: a model that cannot run pruned fails now, not at the first pruning
        epoch. Groups that break it alone are kept whole (``kept_whole``), with a warning; if the copy still
        cannot run without them, the error names ``ignore``."""
        self.kept_whole = []

        def attempt(channels: dict[str, int]) -> None:
            trial = copy_module(pl_module, self)
            amount = self._targets(trial, 1.0, channels)
            if amount is not None:
                P.prune_structured(
                    trial, self._ex(trial), amount, "l1", self.global_pruning, self._ignore, self.round_to, self._fwd
                )

        try:
            attempt(layers)
            return
        except RuntimeError as exc:
            first = exc
        amount = self._targets(pl_module, 1.0, layers)
        ex = self._ex(pl_module)
        bad = P.breaking_groups(
            pl_module,
            ex,
            amount or 0.0,
            self._ignore,
            self._fwd,
            self.global_pruning,
            self.round_to,
            copy_fn=lambda m: copy_module(cast(L.LightningModule, m), self),  # shares the trainer, as the dry run
        )
        if not bad:
            raise ValueError(f"StructuredPruning(amount={self.amount}): {first}") from first
        self.kept_whole = bad
        try:
            attempt(P.prunable_layers(pl_module, ex, self._ignore, self._fwd))
        except RuntimeError as exc:
            self.kept_whole = []
            raise ValueError(f"StructuredPruning(amount={self.amount}): {first}") from exc
        rank_zero_warn(
            f"StructuredPruning: {type(pl_module).__name__} does not run with the groups of {bad} pruned "
            f"({str(first.__cause__ or first).splitlines()[0][:160]}); those groups are kept whole. Name them in "
            "`ignore` to keep them whole without this warning"
        )
        self.tracker(trainer).log_summary({"prune/kept_whole": ", ".join(bad)})

    def _ex(self, pl_module: L.LightningModule) -> Any:
        from lightning.pytorch.utilities import move_data_to_device

        return move_data_to_device(self.example, pl_module.device)

    # ------------------------------------------------------------------ Taylor gradients
    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.importance != "taylor":
            return
        for n, p in pl_module.named_parameters():  # after DDP all-reduce: identical on every rank
            if p.grad is not None:
                g = p.grad.detach()
                self._grad_sum[n] = self._grad_sum[n] + g if n in self._grad_sum else g.clone()
        self._grad_n += 1

    # ------------------------------------------------------------------ pruning events
    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.example is None:  # no step ran yet: this first training step shows what the model receives
            return
        self._ensure_original(trainer, pl_module)
        event = self.schedule.due(trainer, self.done)
        if event is None:
            return
        self._prune(trainer, pl_module, event)

    def _targets(
        self, pl_module: L.LightningModule, frac: float, original: dict[str, int] | None = None
    ) -> float | dict[str, float] | None:
        """Ratio of the *current* channels to remove now so that ``frac`` of ``amount`` is reached (of the
        ``original`` channel counts, default those at the fit's start)."""
        original = self.original_channels if original is None else original
        cur = P.channel_counts(pl_module, list(original))
        return P.step_ratios(original, cur, self.amount, frac, self.global_pruning)

    def _measure_sensitivity(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning_nas.explain import sensitivity as S

        batches = self._eval.labelled()
        if not batches:
            rank_zero_warn(
                "StructuredPruning: no labelled validation batch ran before the first pruning, so the "
                "sensitivity table is skipped (it uses what the validation steps feed the model)"
            )
            return
        layers = list(self.original_channels)
        assert self.sensitivity_levels is not None and self.route is not None  # measured when asked, after the route
        fns = S.prune_perturbations(
            pl_module,
            self._ex(pl_module),
            self.sensitivity_levels,
            layers,
            "l1" if self.importance == "taylor" else self.importance,
            self._ignore,
            forward_fn=self._fwd,
        )
        route = Route.from_state(self.route)
        self.sensitivity = S.sensitivity_table(
            pl_module,
            batches,
            fns,
            copy_fn=lambda m: copy_module(cast(L.LightningModule, m), self),
            forward_fn=route.logits,
        )
        S.log_sensitivity(self.tracker(trainer), self.sensitivity)

    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> None:
        if self.sensitivity_levels and not self.records and not self.sensitivity and trainer.is_global_zero:
            self._measure_sensitivity(trainer, pl_module)
        names_before = param_names(pl_module)
        amount = self._targets(pl_module, self.schedule.fraction(event))
        steps: list[dict[str, Any]] = []
        result = None
        if amount is not None and trainer.is_global_zero:
            grads = self._install_grads(pl_module)
            try:
                result = P.prune_structured(
                    pl_module,
                    self._ex(pl_module),
                    amount,
                    self.importance,
                    self.global_pruning,
                    self._ignore,
                    self.round_to,
                    self._fwd,
                )
            finally:
                self._remove_grads(pl_module, grads)
            steps = [s.to_dict() for s in result.steps]
        if trainer.world_size > 1:
            steps = self._broadcast(trainer, steps)
            if not trainer.is_global_zero:
                P.replay_pruning(pl_module, steps, self._ex(pl_module), self._fwd)
        self.done += [e for e in self.schedule.events() if e <= event and e not in self.done]
        self._grad_sum, self._grad_n = {}, 0
        if steps:
            self.records.append({"order": trainer.global_step, "event": event, "steps": steps})
            rebuild_optimizers(trainer, pl_module, names_before)
        self._log_state(trainer, pl_module)
        if result is not None and self.explain:
            self._log_importance(trainer, result)

    def _install_grads(self, pl_module: L.LightningModule) -> dict[str, Any]:
        if self.importance != "taylor" or not self._grad_n:
            return {}
        saved = {}
        for n, p in pl_module.named_parameters():
            if n in self._grad_sum and self._grad_sum[n].shape == p.shape:
                saved[n] = p.grad
                p.grad = self._grad_sum[n] / self._grad_n
        return saved

    @staticmethod
    def _remove_grads(pl_module: L.LightningModule, saved: dict[str, Any]) -> None:
        for p in pl_module.parameters():
            p.grad = None

    # ------------------------------------------------------------------ resume across the change
    def _replay_items(self, checkpoint: dict[str, Any]) -> list[tuple[int, Any]]:
        state = self._checkpoint_state(checkpoint)
        if not state or not state.get("records"):
            return []
        module = self._pl_module
        from lightning.pytorch.utilities import move_data_to_device

        fwd = Route.from_state(state["route"]).run

        def replay(rec: dict[str, Any]) -> Any:
            return lambda: P.replay_pruning(
                module, rec["steps"], move_data_to_device(state["example"], module.device), fwd
            )

        return [(rec["order"], replay(rec)) for rec in state["records"]]

    # ------------------------------------------------------------------ logging
    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_state(trainer, pl_module)

    def _log_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cur = P.channel_counts(pl_module, list(self.original_channels))
        vals: dict[str, float] = {"prune/params": float(sum(p.numel() for p in pl_module.parameters()))}
        for n, c0 in self.original_channels.items():
            if n in cur:
                vals[f"prune/{n}/channels"] = float(cur[n])
                vals[f"prune/{n}/sparsity"] = 1.0 - cur[n] / c0
        self.tracker(trainer).log_scalars(vals)

    def _log_importance(self, trainer: L.Trainer, result: P.PruneResult) -> None:
        tr = self.tracker(trainer)
        rows = []
        for layer, scores in result.scores.items():
            s = torch.tensor(scores)
            removed = sorted(set(i for i in result.removed.get(layer, []) if i < len(scores)))
            mask = torch.zeros(len(scores), dtype=torch.bool)
            mask[removed] = True
            kept_s, rem_s = s[~mask], s[mask]
            rows.append(
                [
                    layer,
                    len(scores),
                    len(removed),
                    float(kept_s.mean()) if len(kept_s) else None,
                    float(kept_s.min()) if len(kept_s) else None,
                    float(rem_s.mean()) if len(rem_s) else None,
                    float(rem_s.max()) if len(rem_s) else None,
                ]
            )
            tr.log_histogram(f"prune/{layer}/importance_kept", kept_s)
            if len(rem_s):
                tr.log_histogram(f"prune/{layer}/importance_removed", rem_s)
        tr.log_table(
            "prune/importance",
            ["layer", "channels_before", "removed", "kept_mean", "kept_min", "removed_mean", "removed_max"],
            rows,
        )


class MagnitudePruning(LightningNASCallback):
    """Unstructured magnitude pruning (``torch.nn.utils.prune`` masks), made permanent when training ends.

    Unlike ``StructuredPruning`` this does not make dense CPU inference faster; it gives sparse weights
    (for sparse kernels or compression) and is the comparison point for structured pruning.

    Args:
        amount: final fraction of zero weights in ``[0, 1)`` (of all Linear/Conv weights together when
            ``global_pruning``, else of each layer).
        schedule: ``"one_shot"``, ``"linear"`` or ``"cubic"``/``"agp"``, as in ``StructuredPruning``.
        start_epoch: first pruning epoch.
        end_epoch: last pruning epoch of a gradual schedule (default ``start_epoch``).
        every_n_epochs: prune every this many epochs inside the range.
        start_step: first pruning optimizer step, to schedule in steps instead (epoch arguments at defaults).
        end_step: last pruning step of a gradual schedule (default ``start_step``).
        every_n_steps: prune every this many optimizer steps inside the range (default 1).
        global_pruning: one threshold for all layers (default) or one per layer.
        ignore: layer names (prefix or glob) to leave dense.
        make_permanent: fold masks into the weights at the end of ``fit`` (``prune.remove``).

    Logged: ``prune/<layer>/sparsity`` and ``prune/sparsity`` (overall) every epoch.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import MagnitudePruning
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> model = Classifier(DigitsCNN(width=8))
        >>> prune = MagnitudePruning(amount=0.5)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp(), callbacks=[prune])
        >>> trainer.fit(model, datamodule=DigitsDataModule())
        >>> weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        >>> zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        >>> round(zeros, 2)  # one global threshold: half of all conv/linear weights are zero, shapes unchanged
        0.5
    """

    _state_attrs = ("done",)

    def __init__(
        self,
        amount: float = 0.5,
        schedule: str = "one_shot",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        start_step: int | None = None,
        end_step: int | None = None,
        every_n_steps: int | None = None,
        global_pruning: bool = True,
        ignore: Sequence[str] = (),
        make_permanent: bool = True,
    ) -> None:
        super().__init__()
        check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
        self.schedule = Schedule.of(
            schedule, start_epoch, end_epoch, every_n_epochs, start_step, end_step, every_n_steps
        )
        check_type("global_pruning", global_pruning, bool)
        check_type("make_permanent", make_permanent, bool)
        if isinstance(ignore, str):
            ignore = [ignore]
        self.amount, self.global_pruning, self.ignore = amount, global_pruning, list(ignore)
        self.make_permanent = make_permanent
        self.done: list[int] = []

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pl_module = pl_module
        install_restore_hook(pl_module, self._replay_items)
        super().setup(trainer, pl_module, stage)

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not P.magnitude_targets(pl_module, self.ignore):
            raise ValueError(
                f"MagnitudePruning: no Linear/Conv layer in {type(pl_module).__name__} after `ignore`={self.ignore}"
            )

    def _replay_items(self, checkpoint: dict[str, Any]) -> list[tuple[int, Any]]:
        module = self._pl_module
        sd = checkpoint.get("state_dict", {})
        if not any(k.endswith("weight_mask") for k in sd):
            return []
        return [(-1, lambda: P.add_masks_for_state_dict(module, sd))]

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        event = self.schedule.due(trainer, self.done)
        if event is None:
            return
        target = self.amount * self.schedule.fraction(event)
        # magnitudes are identical on every rank (DDP keeps weights in sync), so every rank masks the same
        P.magnitude_prune(pl_module, target, self.global_pruning, self.ignore)
        self.done += [e for e in self.schedule.events() if e <= event and e not in self.done]
        self._log(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.make_permanent:
            P.make_permanent(pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sp = P.sparsity(pl_module, self.ignore)
        total = sum(cast(torch.Tensor, m.weight).numel() for _, m in P.magnitude_targets(pl_module, self.ignore))
        zero = sum(sp[n] * cast(torch.Tensor, m.weight).numel() for n, m in P.magnitude_targets(pl_module, self.ignore))
        vals = {f"prune/{n}/sparsity": v for n, v in sp.items()}
        vals["prune/sparsity"] = zero / max(total, 1)
        self.tracker(trainer).log_scalars(vals)
