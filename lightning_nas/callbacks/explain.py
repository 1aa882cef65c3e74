"""Explain callbacks: ``TrainingDynamics``, ``DecisionPaths`` and ``ArchitectureView`` (``AttributionMonitor``
lives in ``callbacks/attribution.py``). They decide *when*; ``lightning_nas.explain`` computes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_nas._compat import train_data_source
from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_int, check_type
from lightning_nas.callbacks._probe import ProbedCallback, ProbeSource, resolve_probe
from lightning_nas.callbacks._route import Route, first_rows
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.explain import dynamics as D
from lightning_nas.explain import graph as G
from lightning_nas.explain import paths as P
from lightning_nas.explain.attribution import predict


class TrainingDynamics(LightningNASCallback):
    """Per-layer weight norm, gradient norm, update-to-weight ratio and dead units, every N optimizer steps.

    Logged under ``dynamics/<layer>/``: ``weight_norm``, ``grad_norm``, ``update_ratio`` (for weight layers:
    conv, linear, embedding) and ``dead_fraction``, ``dead_channel_fraction`` (for ReLU-type modules, over
    the batch of that step); ``dynamics/grad_norm_total``; weight and gradient histograms
    (``dynamics/<layer>/weight_hist``, ``.../grad_hist``) every ``histogram_every_n_steps``.
    Cheap by default: nothing runs between logging steps.

    Args:
        every_n_steps: log scalars when ``global_step % every_n_steps == 0``.
        histogram_every_n_steps: histograms as well when `global_step` is a multiple of it (0: never).
        layers: weight-layer names to watch (default: all).
        dead_units: watch activation modules for units that never fire.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> import json, pathlib
        >>> from lightning_nas.callbacks import TrainingDynamics
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> dynamics = TrainingDynamics(every_n_steps=1, histogram_every_n_steps=0)
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[dynamics])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> rows = pathlib.Path(root, "nas_files", "scalars.jsonl").read_text().splitlines()
        >>> sorted(k for k in json.loads(rows[0]) if k.startswith("dynamics/net.features.0"))
        ... # doctest: +NORMALIZE_WHITESPACE
        ['dynamics/net.features.0/grad_norm', 'dynamics/net.features.0/update_ratio',
         'dynamics/net.features.0/weight_norm']
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        histogram_every_n_steps: int = 250,
        layers: list[str] | None = None,
        dead_units: bool = True,
    ) -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, 1)
        check_int("histogram_every_n_steps", histogram_every_n_steps, 0)
        check_type("layers", layers, list, allow_none=True)
        check_type("dead_units", dead_units, bool)
        self.every_n_steps, self.histogram_every_n_steps = every_n_steps, histogram_every_n_steps
        self.layer_names, self.dead_units = layers, dead_units
        self._due = self._hist = False
        self._start_step, self._last_step = 0, -1
        self._before: dict[str, torch.Tensor] | None = None
        self._metrics: dict[str, float] = {}
        self._probe: D.DeadUnitProbe | None = None

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = D.tracked_layers(pl_module, self.layer_names)
        if not layers:
            raise ValueError(
                f"TrainingDynamics: {type(pl_module).__name__} has no weight layers (conv, linear, embedding) to watch"
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._due, self._last_step, self._before = False, -1, None

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._due:  # gradient accumulation: keep watching until the optimizer step
            return
        step = trainer.global_step
        self._due = trainer.is_global_zero and step % self.every_n_steps == 0 and step != self._last_step
        self._hist = self._due and self.histogram_every_n_steps > 0 and step % self.histogram_every_n_steps == 0
        self._start_step = step
        self._metrics = {}
        if self._due and self.dead_units:
            acts = D.activation_modules(pl_module)
            self._probe = D.DeadUnitProbe(acts).__enter__() if acts else None

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._due or self._before is not None:
            return
        layers = D.tracked_layers(pl_module, self.layer_names)
        grads = D.grad_norms(layers)
        self._metrics.update({f"dynamics/{n}/grad_norm": v for n, v in grads.items()})
        if grads:
            self._metrics["dynamics/grad_norm_total"] = float(sum(v * v for v in grads.values()) ** 0.5)
        if self._hist:
            tracker = self.tracker(trainer)
            for n, m in layers:
                w = D.layer_weight(m)
                if w.grad is not None:
                    tracker.log_histogram(f"dynamics/{n}/grad_hist", w.grad)
        self._before = D.snapshot(layers)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._due or (self._before is None and trainer.global_step == self._start_step):
            return  # not a logging step, or an accumulation micro-batch before the optimizer step
        self._due = False
        self._last_step = self._start_step
        layers = D.tracked_layers(pl_module, self.layer_names)
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
            for n, r in self._probe.result().items():
                self._metrics.update({f"dynamics/{n}/{k}": v for k, v in r.items()})
            self._probe = None
        self._metrics.update({f"dynamics/{n}/weight_norm": v for n, v in D.weight_norms(layers).items()})
        if self._before is not None:
            self._metrics.update(
                {f"dynamics/{n}/update_ratio": v for n, v in D.update_ratios(layers, self._before).items()}
            )
            self._before = None
        tracker = self.tracker(trainer)
        step = self._start_step  # the optimizer step already advanced global_step
        tracker.log_scalars(self._metrics, step=step)
        if self._hist:
            for n, m in layers:
                tracker.log_histogram(f"dynamics/{n}/weight_hist", D.layer_weight(m), step=step)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
            self._probe = None


class DecisionPaths(ProbedCallback):
    """Which channels carry each class, how much classes share them, and which matter (``explain.paths``).

    On a fixed probe, at fit end (and every ``every_n_epochs`` when given), logs the tables
    ``explain/paths/top_channels``, ``explain/paths/overlap`` (Jaccard per class pair) and
    ``explain/paths/ablation`` (logit drop when a channel is zeroed), and ``explain/paths/mean_jaccard``.
    The probe is what the model receives (the inputs the user's validation steps feed the module they call;
    training steps when no validation ran), unless ``forward_fn``/``batch_fn`` say otherwise.

    Args:
        n_samples: probe size (round-robin over classes, fixed by ``seed``).
        top_k: channels per layer on a class's path.
        layers: module names to follow (default: activation modules, else conv/linear layers). A module run
            several times per forward is followed per call (``"name#k"``).
        every_n_epochs: also run after every N-th epoch (``None``: only at fit end).
        target: ``"label"`` or ``"pred"``: which class each probe sample stands for.
        max_ablations: the ablation forwards (of the probe) one run may spend, on the layers nearest the output
            first; the default keeps a run to about one validation pass of a digits-sized set (``None``: all).
        forward_fn: an override: ``(pl_module, x) -> (batch, classes)`` logits on raw validation inputs.
        batch_fn: an override: ``batch -> (x, y)`` for raw validation batches.
        seed: picks the probe set.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import DecisionPaths
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> paths = DecisionPaths(n_samples=10, top_k=2, max_ablations=2)
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[paths])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> paths.report.layers  # the activations followed
        ['net.features.2', 'net.features.5']
        >>> len(paths.report.top_channels["net.features.5"][3])  # class 3's top_k channels there
        2
    """

    def __init__(
        self,
        n_samples: int = 50,
        top_k: int = 3,
        layers: list[str] | None = None,
        every_n_epochs: int | None = None,
        target: str = "label",
        max_ablations: int | None = 16,
        forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        batch_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from lightning_nas._validate import check_choice

        check_int("n_samples", n_samples, 1)
        check_int("top_k", top_k, 1)
        check_type("layers", layers, list, allow_none=True)
        if every_n_epochs is not None:
            check_int("every_n_epochs", every_n_epochs, 1)
        if max_ablations is not None:
            check_int("max_ablations", max_ablations, 0)
        check_choice("target", target, ("label", "pred"))
        check_int("seed", seed, 0)
        self.n_samples, self.top_k, self.layers, self.every_n_epochs = n_samples, top_k, layers, every_n_epochs
        self.target, self.forward_fn, self.batch_fn, self.seed = target, forward_fn, batch_fn, seed
        self.max_ablations = max_ablations
        self.probe: Any = None
        self.report: P.PathReport | None = None
        self._source = ProbeSource("DecisionPaths", n_samples, seed, forward_fn, batch_fn)

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = self.layers if self.layers is not None else P.default_layers(pl_module)
        modules = dict(pl_module.named_modules())
        bad = [n for n in layers if n not in modules]
        if bad or not layers:
            raise ValueError(
                f"DecisionPaths: `layers` {bad or layers} are not modules of {type(pl_module).__name__};"
                f" allowed e.g.: {P.default_layers(pl_module)[:12]}"
            )
        self._source.check_size(trainer, pl_module)
        self.probe = None
        if not self._source.captured:
            self._adopt(pl_module, self._source.resolve(trainer, pl_module))

    def _preview(self, pl_module: L.LightningModule) -> None:
        """No validation loop: check the model on the first training step's samples, before its backward pass."""
        probe = self._source.preview(pl_module)
        if probe is not None and self.probe is None:
            self._adopt(pl_module, probe, keep=False)

    def _adopt(self, pl_module: L.LightningModule, probe: Any, keep: bool = True) -> None:
        if self.target == "label" and (probe.y is None or probe.y.ndim != 1):
            raise ValueError("DecisionPaths: `target`='label' needs 1-D class labels; use target='pred'")
        self._source.check(pl_module, probe)
        if keep:
            self.probe = probe

    def _ensure_probe(self, pl_module: L.LightningModule, final: bool = True) -> None:
        if self.probe is None and self._source.captured:
            probe = self._source.collected(pl_module, final)
            if probe is not None:
                self._adopt(pl_module, probe)

    @override
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure_probe(pl_module, final=False)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._ensure_probe(pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.run(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> P.PathReport | None:
        if not trainer.is_global_zero:
            return None
        self._ensure_probe(pl_module)
        if self.probe is None:
            return None
        device = pl_module.device
        x = self.probe.x.to(device)
        fwd, rest = self._source.forward(self.probe)
        rest = move_data_to_device(rest, device)
        with eval_mode(pl_module):
            cls = (
                self.probe.y
                if self.target == "label"
                else predict(pl_module, x, fwd, additional_forward_args=rest).cpu()
            )
        rank_zero_info(f"DecisionPaths: following {len(x)} probe samples (epoch {trainer.current_epoch})")
        self.report = P.decision_paths(
            pl_module,
            x,
            cls.to(device),
            layers=self.layers,
            top_k=self.top_k,
            forward_fn=fwd,
            additional_forward_args=rest,
            max_ablations=self.max_ablations,
            progress=lambda msg: rank_zero_info(f"DecisionPaths: {msg}"),
        )
        tracker = self.tracker(trainer)
        for name, (cols, rows) in self.report.tables().items():
            tracker.log_table(f"explain/paths/{name}", cols, rows)
        tracker.log_scalars({"explain/paths/mean_jaccard": self.report.mean_overlap})
        return self.report


class ArchitectureView(LightningNASCallback):
    """The model as a layer table and a graph image, when the fit first runs it and at fit end (after any
    compression).

    The model is the one the user's step runs, on the inputs it really receives (found in the first validation or
    training step); ``forward_fn``/``batch_fn`` override that with raw batches and an adapter. Logs
    ``explain/architecture/layers`` (table: name, type, in/out shape, params, MACs, calls),
    ``explain/architecture/graph`` (image) and the scalars ``explain/architecture/params`` (of the modules the
    step runs) and ``.../macs``, each once at the start and once at the end; the graph is drawn again at the end
    only when the layer table changed (drawing it costs ~0.5 s on a ResNet-18), and the summary
    ``explain/architecture/changed`` says whether it did.

    Args:
        forward_fn: an override: ``(pl_module, x) -> output`` with ``x`` a raw batch's input.
        batch_fn: an override: ``batch -> (x, y)`` for the example input (one validation or training sample).
        max_nodes: boxes drawn in the graph image.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> import json, pathlib
        >>> from lightning_nas.callbacks import ArchitectureView
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> view = ArchitectureView()
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[view])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> sorted(p.name for p in pathlib.Path(root, "nas_files", "tables").iterdir())
        ['explain_architecture_layers.csv', 'explain_architecture_layers.jsonl']
    """

    def __init__(
        self,
        forward_fn: Callable[[nn.Module, torch.Tensor], Any] | None = None,
        batch_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        max_nodes: int = 60,
    ) -> None:
        super().__init__()
        check_int("max_nodes", max_nodes, 1)
        self.forward_fn, self.batch_fn, self.max_nodes = forward_fn, batch_fn, max_nodes
        self._example: Any = None
        self._route: Route | None = None
        self._drawn: list[list[Any]] | None = None  # the layer table the last graph image shows

    @property
    def _captured(self) -> bool:
        return self.forward_fn is None and self.batch_fn is None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._drawn = None
        if stage == "fit" and self._captured:
            self._example, self._route = None, None
            io = self.model_io(trainer, pl_module)
            io.on_route(self, lambda kind, route: self._route_found(trainer, pl_module, io))
        super().setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.release_model_io(pl_module)

    def _route_found(self, trainer: L.Trainer, pl_module: L.LightningModule, io: Any) -> None:
        if self._route is not None:
            return
        self._route = io.route("eval")
        args, kwargs = io.example("eval")
        self._example = first_rows(args, kwargs, 1)
        self.log_view(trainer, pl_module, "start")

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._captured:
            return
        from lightning_nas.explain._attribution_utils import required_inputs

        if self.forward_fn is None and required_inputs(pl_module) > 1:
            raise ValueError(
                f"ArchitectureView: {type(pl_module).__name__}.forward takes several inputs; pass "
                "`forward_fn=lambda model, x: ...`"
            )
        try:
            self._example = resolve_probe(trainer, pl_module, "ArchitectureView", 1, 0, self.batch_fn).x
        except ValueError:  # no validation data: one training sample is as good an example input
            from lightning_nas.explain.attribution import select_probe

            source = train_data_source(trainer)
            if not source.is_defined():
                raise ValueError(
                    "ArchitectureView needs a training or validation dataloader for an example input"
                ) from None
            self._example = select_probe(source.dataloader(), 1, batch_fn=self.batch_fn, max_scan=1).x

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._captured:
            self.log_view(trainer, pl_module, "start")

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_view(trainer, pl_module, "end")

    def log_view(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> list[G.LayerRow]:
        if not trainer.is_global_zero or self._example is None:
            return []
        example = move_data_to_device(self._example, pl_module.device)
        if self._route is not None:
            rows = G.layer_table(pl_module, example, self._route.run)
            parts = {id(p): p for m in self._route.modules(pl_module) for p in m.parameters()}
        else:
            rows = G.layer_table(pl_module, example, self.forward_fn)
            parts = {id(p): p for p in pl_module.parameters()}
        tracker = self.tracker(trainer)
        table = [r.as_list() for r in rows]
        tracker.log_table("explain/architecture/layers", G.TABLE_COLUMNS, table)
        if when == "end":
            tracker.log_summary({"explain/architecture/changed": table != self._drawn})
        if table != self._drawn:
            fig = G.render_graph(
                rows,
                G.graph_edges(pl_module, [r.name for r in rows]),
                title=f"{type(pl_module).__name__} at fit {when}",
                max_nodes=self.max_nodes,
            )
            tracker.log_image("explain/architecture/graph", fig, caption=f"fit {when}")
            self._drawn = table
        tracker.log_scalars(
            {
                "explain/architecture/params": float(sum(p.numel() for p in parts.values())),
                "explain/architecture/macs": float(sum(r.macs for r in rows)),
            }
        )
        return rows
