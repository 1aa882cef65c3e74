"""``KnowledgeDistillation``: distill a teacher into the user's module without touching its training_step."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from lightning_nas._validate import check_range, check_type
from lightning_nas.callbacks._capture import StepRecord
from lightning_nas.callbacks._route import Route, labels_of, logits_of
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.compress.distill import FeatureAdapter, feature_loss, kd_loss, layer_width, load_teacher
from lightning_nas.explain.agreement import AGREEMENT_COLUMNS, Agreement

_ADAPTERS = "_kd_adapters"


def _logits(out: Any) -> torch.Tensor:
    t = logits_of(out)
    if t is None:
        raise ValueError(
            f"KnowledgeDistillation: cannot find logits in a forward output of type {type(out).__name__} "
            "(allowed: a tensor, a tuple whose first item is a tensor, or a dict with 'logits')"
        )
    return t


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


class KnowledgeDistillation(LightningNASCallback):
    """Add ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` to the loss the user's ``training_step``
    returns, which keeps weight ``1 - alpha``; optionally ``feature_weight * mean((A(f_s) - f_t)^2)`` per
    feature pair, ``A`` a learnable adapter trained by the user's optimizer.

    The student is the model the user's ``training_step`` runs: the module it calls (``self(x)``,
    ``self.model(x)``, or a backbone then a head), found in the first step, whose output are the student logits;
    the teacher runs on the very inputs that module received (after the step's own resizing, normalising or
    key picking), in eval mode and without gradients, on the student's device. The term is added to the loss
    the step returns (the step itself is not changed); adapters live in the LightningModule during the fit (so
    the optimizer and checkpoints hold them) and are removed at ``teardown`` (they remain in ``adapters``).

    Args:
        teacher: an ``nn.Module``, or the path of a state dict / Lightning checkpoint read with
            ``weights_only=True`` into ``teacher_architecture``.
        temperature: softmax temperature ``T > 0``.
        alpha: weight of the distillation term, in [0, 1].
        features: ``{student_layer: teacher_layer}`` names (student names inside the LightningModule).
        feature_weight: weight of each feature loss.
        teacher_architecture: the module a checkpoint path is loaded into.
        module_name: an override: the name of the submodule whose forward output are the student logits
            (``""``: the module the step calls, found from the first step).
        explain: log agreement, KL and the per-class table each validation epoch.

    Logged: ``distill/kd_loss``, ``distill/task_loss``, ``distill/feature_loss`` (train steps, through the
    module's ``log``); ``distill/agreement``, ``distill/kl`` and table ``distill/per_class`` (columns class,
    support, agreement, student_acc, teacher_acc) each validation epoch.

    Examples:
        A narrow student learns from a (here untrained, in practice trained) wider teacher:

        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import KnowledgeDistillation
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> kd = KnowledgeDistillation(DigitsCNN(width=16), temperature=4.0, alpha=0.5)
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[kd])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("distill/"))
        ['distill/kd_loss', 'distill/task_loss']
    """

    def __init__(
        self,
        teacher: nn.Module | str,
        temperature: float = 4.0,
        alpha: float = 0.5,
        features: dict[str, str] | None = None,
        feature_weight: float = 1.0,
        teacher_architecture: nn.Module | None = None,
        module_name: str = "",
        explain: bool = True,
    ) -> None:
        super().__init__()
        check_type("teacher", teacher, (nn.Module, str, Path))
        self.temperature = check_range("temperature", temperature, 0.0, None, low_inclusive=False)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.features = dict(check_type("features", features, dict, allow_none=True) or {})
        for s, t in self.features.items():
            check_type("features key", s, str)
            check_type("features value", t, str)
        self.feature_weight = check_range("feature_weight", feature_weight, 0.0, None)
        check_type("teacher_architecture", teacher_architecture, nn.Module, allow_none=True)
        self.module_name = check_type("module_name", module_name, str)
        self.explain = check_type("explain", explain, bool)
        self.teacher = load_teacher(teacher, teacher_architecture)
        self.adapters = nn.ModuleDict()
        self.history: list[dict[str, float]] = []
        # epoch agreement (validation, and training batches when no validation runs): torchmetrics Metrics made
        # at the first step (they need the class count), on the student's device, synced over ranks by compute()
        self._acc: Agreement | None = None
        self._train_acc: Agreement | None = None
        self._logged_epoch = -1
        self._pl: L.LightningModule | None = None
        self._hooks: list[Any] = []
        self._s_hooks: dict[str, tuple[nn.Module, Any]] = {}  # student feature layer -> (module, hook handle)
        self._capture = False
        self._checked = False
        self._clear()

    def _clear(self) -> None:
        if not hasattr(self, "_s_feats"):
            self._s_feats: dict[str, torch.Tensor] = {}
            self._t_feats: dict[str, torch.Tensor] = {}
        self._s_feats.clear()  # in place: the feature hooks hold these dicts
        self._t_feats.clear()

    # ------------------------------------------------------------------ set-up
    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError(
                "KnowledgeDistillation needs automatic optimization (the loss returned by training_step);"
                f" {type(pl_module).__name__}.automatic_optimization is False"
            )
        if self.module_name:
            self._get(pl_module, self.module_name, "module_name")
        adapters = nn.ModuleDict()
        for s_name, t_name in self.features.items():
            s_layer = self._get(pl_module, s_name, "features (student layer)")
            t_layer = self._get(self.teacher, t_name, "features (teacher layer)")
            cs, ct = layer_width(s_layer), layer_width(t_layer)
            if cs is None or ct is None:
                raise ValueError(
                    f"`features` pair {s_name!r} -> {t_name!r}: cannot read the channel count of "
                    f"{'the student' if cs is None else 'the teacher'} layer (allowed: layers ending in "
                    "a Conv, Linear, BatchNorm or LayerNorm)"
                )
            adapters[_key(s_name)] = FeatureAdapter(cs, ct)
        if self.features:
            if set(adapters.keys()) != set(self.adapters.keys()):  # a second fit keeps the trained adapters
                self.adapters = adapters
            setattr(pl_module, _ADAPTERS, self.adapters)  # in configure_optimizers' parameters and in checkpoints
        self._pl, self._trainer = pl_module, trainer
        self._checked = False
        route = Route((self.module_name,)) if self.module_name else None
        io = self.model_io(trainer, pl_module)
        io.listen(self, "train", self._distill_step, route)
        io.listen(self, "eval", self._eval_step, route)
        if self.features:
            io.before(self, "train", self._before_train_step)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Hooks go in here, after every callback's setup: another callback (QAT) may have swapped submodules.
        self.teacher.to(pl_module.device).eval()
        self._s_hooks = {}
        for s_name, t_name in self.features.items():
            t_layer = self.teacher.get_submodule(t_name)
            self._hook_student_layer(pl_module, s_name)
            self._hooks.append(t_layer.register_forward_hook(self._feature_hook(self._t_feats, s_name, False)))

    @property
    def _lm(self) -> L.LightningModule:
        """The student module of this fit (set in ``setup``)."""
        if self._pl is None:
            raise RuntimeError("KnowledgeDistillation: the student is known from `setup`, which has not run yet")
        return self._pl

    def _hook_student_layer(self, pl_module: L.LightningModule, s_name: str) -> None:
        layer = pl_module.get_submodule(s_name)
        old = self._s_hooks.get(s_name)
        if old is not None:
            if old[0] is layer:
                return
            old[1].remove()
        self._s_hooks[s_name] = (layer, layer.register_forward_hook(self._feature_hook(self._s_feats, s_name, True)))

    def _before_train_step(self) -> None:
        # a callback may have swapped the named layer since the last step (QAT): hook the one this step runs
        for s_name in self.features:
            self._hook_student_layer(self._lm, s_name)
        self._clear()
        self._capture = True

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capture = False
        self._clear()

    @staticmethod
    def _get(root: nn.Module, name: str, arg: str) -> nn.Module:
        try:
            return root.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in root.named_modules() if n][:15]
            raise ValueError(
                f"`{arg}` names {name!r}, which is not a layer of {type(root).__name__}; allowed: e.g. {names}"
            ) from None

    # ------------------------------------------------------------------ capture
    def _feature_hook(self, store: dict[str, torch.Tensor], key: str, student: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if self._capture and (not student or key not in store):
                store[key] = _logits(out)

        return hook

    def _teach(self, record: StepRecord) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Student logits of the step's first run of the student, and the teacher's on the same inputs."""
        if not record.calls:
            return None
        call = record.calls[0]
        s = _logits(call.output)
        teacher = self.teacher
        if next(teacher.parameters(), s).device != s.device:
            teacher.to(s.device)
        with torch.inference_mode():  # one teacher forward per step: no autograd record, no copy, no host sync
            t = _logits(teacher(*call.args, **call.kwargs))
        if self._acc is None or self._acc.num_classes != s.shape[-1]:
            self._acc = Agreement(s.shape[-1], self.temperature).to(s.device)
            self._train_acc = Agreement(s.shape[-1], self.temperature).to(s.device)
        if not self._checked:
            if t.shape != s.shape:
                assert record.route is not None  # calls are recorded on a route
                raise ValueError(
                    f"KnowledgeDistillation: the teacher's output shape {tuple(t.shape)} differs from the "
                    f"student's {tuple(s.shape)} (`{record.route.describe()}`) on the same input; "
                    "teacher and student must predict the same classes"
                )
            self._checked = True
        return s, t

    def _distill_step(self, record: StepRecord) -> Any:
        out, loss = record.output, record.loss
        if loss is None:
            return None
        pair = self._teach(record)
        if pair is None:
            name = self.module_name or "any module"
            raise RuntimeError(
                f"KnowledgeDistillation: training_step never called {name!r} to produce logits; set "
                "`module_name` to the submodule that produces the logits"
            )
        s_logits, t_logits = pair
        kd = kd_loss(s_logits, t_logits, self.temperature)
        total = (1.0 - self.alpha) * loss + self.alpha * kd
        logs = {"distill/kd_loss": kd.detach(), "distill/task_loss": loss.detach()}
        if self.features:
            missing = [k for k in self.features if k not in self._s_feats or k not in self._t_feats]
            if missing:
                raise RuntimeError(f"KnowledgeDistillation: feature layer(s) {missing} produced no output in this step")
            adapters = cast(dict[str, FeatureAdapter], self.adapters)  # FeatureAdapters, made in setup
            f = cast(
                torch.Tensor,
                sum(feature_loss(adapters[_key(k)], self._s_feats[k], self._t_feats[k]) for k in self.features),
            )
            total = total + self.feature_weight * f
            logs["distill/feature_loss"] = f.detach()
        self._lm.log_dict(logs, on_step=True, on_epoch=False)
        if self.explain:  # used when the module has no validation loop
            assert self._train_acc is not None  # made by _teach
            self._train_acc.update(s_logits, t_logits, labels_of(record.batch, s_logits.shape[0]))
        self._clear()
        return total if isinstance(out, torch.Tensor) else dict(out, loss=total)

    # ------------------------------------------------------------------ explanations
    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._acc is not None:
            self._acc.reset()

    def _eval_step(self, record: StepRecord) -> None:
        trainer = self._trainer
        if record.step != "validation_step" or (self._checked and (not self.explain or trainer.sanity_checking)):
            return
        pair = self._teach(record)  # the first one checks the teacher's output shape before any training step
        if pair is not None and self.explain and not trainer.sanity_checking:
            assert self._acc is not None  # made by _teach
            self._acc.update(pair[0], pair[1], labels_of(record.batch, pair[0].shape[0]))
        self._clear()

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.explain and not trainer.sanity_checking:
            self._log_agreement(trainer, pl_module, self._acc)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_acc is not None:
            self._train_acc.reset()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.explain and self._logged_epoch != trainer.current_epoch:  # no validation ran: training batches
            self._log_agreement(trainer, pl_module, self._train_acc)

    def _log_agreement(self, trainer: L.Trainer, pl_module: L.LightningModule, acc: Agreement | None) -> None:
        if acc is None:  # no step ran the student (every rank runs the first step, so none has a metric)
            return
        res = acc.compute()  # exact epoch numbers over every rank's data (sum states)
        entry = {"distill/agreement": res["agreement"], "distill/kl": res["kl"]}
        self.history.append(dict(entry, epoch=trainer.current_epoch))
        self._logged_epoch = trainer.current_epoch
        tracker = self.tracker(trainer)
        tracker.log_scalars(entry)
        tracker.log_table("distill/per_class", AGREEMENT_COLUMNS, res["rows"])

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for h in self._hooks + [h for _, h in self._s_hooks.values()]:
            h.remove()
        self._hooks, self._s_hooks = [], {}
        self.release_model_io(pl_module)
        if _ADAPTERS in pl_module._modules:
            del pl_module._modules[_ADAPTERS]
        self._pl = None
