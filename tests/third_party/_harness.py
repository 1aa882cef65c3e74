"""What the matrix needs besides the projects: fit a project with callbacks, watch the user's own step with
plain torch hooks (what the model really receives and returns), and read back what the callbacks logged
(the library's file sink, ``nas_files/`` under ``default_root_dir`` when the Trainer has no logger).

Nothing here asks lightning_nas how it captures anything: the truth is taken from the user's step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class Project:
    """One third-party project, as the matrix drives it (never seen by the callbacks)."""

    key: str
    build: Callable[[bool], L.LightningModule]  # searchable -> a fresh, seeded-by-caller module
    fit_data: Callable[[], dict]  # kwargs for trainer.fit (datamodule= or dataloaders)
    val_loader: Callable[[], DataLoader]  # the user's validation data (held-out tokens for the LM)
    ref_loader: Callable[[], DataLoader]  # training data, unshuffled (drift reference)
    input_module: str  # the submodule the step calls first ("" = the module)
    logits_module: str  # the submodule whose output the loss uses
    labels: Callable[[Any], torch.Tensor]  # batch -> labels aligned with the logits' rows
    raw_input: Callable[[Any], torch.Tensor]  # batch -> the input tensor the dataset yields
    predict: Callable[[L.LightningModule, torch.Tensor], torch.Tensor]  # the user's inference path, raw x -> scores
    teacher: Callable[[L.LightningModule], nn.Module]  # a trained copy, taking what input_module takes
    limit_train_batches: int | None = None  # None: whole epochs
    max_epochs: int = 3
    has_validation: bool = True
    manual_optimization: bool = False


class StepCounter(L.Callback):
    """Counts optimizer steps taken: a refusal must come before the first one (nothing of the user's is lost; a
    project without validation shows the library its model in the forward of its first training step)."""

    def __init__(self) -> None:
        self.started = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.started += 1


def trainer(tmp_path: Path, project: Project, callbacks: list, **kwargs) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=project.max_epochs,
        limit_train_batches=project.limit_train_batches,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    opts.update(kwargs)
    return L.Trainer(**opts)


def fit(
    tmp_path: Path,
    project: Project,
    callbacks: list,
    *,
    searchable: bool = False,
    seed: int = 0,
    counter: StepCounter | None = None,
) -> tuple[L.LightningModule, L.Trainer, StepCounter, int]:
    """Seeded build + fit. Returns the module, the trainer, the step counter and the parameter count before."""
    L.seed_everything(seed, verbose=False)
    module = project.build(searchable)
    params_before = n_params(module)
    counter = counter if counter is not None else StepCounter()
    t = trainer(tmp_path, project, [*callbacks, counter])
    t.fit(module, **project.fit_data())
    return module, t, counter, params_before


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------- the user's step
@dataclass
class Observed:
    """What the user's own step fed its model and got back, batch by batch."""

    inputs: list[tuple[tuple, dict]] = field(default_factory=list)  # (args, kwargs) of input_module's call
    logits: list[torch.Tensor] = field(default_factory=list)  # output of logits_module
    labels: list[torch.Tensor] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # leaf modules run (first batch): shapes
    ran: set[str] = field(default_factory=set)  # every submodule whose forward ran
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def all_logits(self) -> torch.Tensor:
        return torch.cat([z.reshape(-1, z.shape[-1]) for z in self.logits])

    @property
    def all_labels(self) -> torch.Tensor:
        return torch.cat([y.reshape(-1) for y in self.labels])

    @property
    def preds(self) -> torch.Tensor:
        return self.all_logits.argmax(-1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.all_labels).float().mean())


def _shape(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)):
        for t in v:
            if isinstance(t, torch.Tensor):
                return tuple(t.shape)
    return None


def _detach(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_detach(t) for t in v)
    if isinstance(v, dict):
        return {k: _detach(t) for k, t in v.items()}
    return v


class _Watch:
    """Forward hooks on the module the step calls, the module giving the logits, and every leaf."""

    def __init__(self, module: nn.Module, project: Project, obs: Observed) -> None:
        self.obs, self.project, self.handles = obs, project, []
        self.seen_in = self.seen_out = False
        self.first_batch = True
        inp = module.get_submodule(project.input_module)
        out = module.get_submodule(project.logits_module)
        self.handles.append(inp.register_forward_pre_hook(self._pre, with_kwargs=True))
        self.handles.append(out.register_forward_hook(self._out))
        for name, m in module.named_modules():
            if name:
                leaf = not any(True for _ in m.children())
                self.handles.append(m.register_forward_hook(self._leaf(name, leaf)))

    def _pre(self, m, args, kwargs):
        if not self.seen_in:
            self.seen_in = True
            self.obs.inputs.append((_detach(args), _detach(kwargs)))

    def _out(self, m, args, out):
        if not self.seen_out:
            self.seen_out = True
            self.obs.logits.append(out.detach().clone())

    def _leaf(self, name, leaf):
        def hook(m, args, out):
            self.obs.ran.add(name)
            if not self.first_batch or not leaf:
                return
            rec = self.obs.layers.setdefault(
                name, {"type": type(m).__name__, "in": _shape(args), "out": _shape(out), "calls": 0}
            )
            rec["calls"] += 1

        return hook

    def batch_start(self) -> None:
        self.seen_in = self.seen_out = False

    def batch_end(self, batch) -> None:
        self.obs.labels.append(self.project.labels(batch).detach().cpu())
        self.first_batch = False

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _WatchCallback(L.Callback):
    def __init__(self, watch_factory) -> None:
        self.factory, self.watch = watch_factory, None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.watch = self.factory(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.watch.batch_start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.watch.batch_end(batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.watch.close()


def run_user_step(
    module: L.LightningModule, project: Project, loader: DataLoader | None = None, tmp_path: Path | None = None
) -> Observed:
    """Run the user's own evaluation step over ``loader`` (default: the validation data) and observe it.

    Projects with a ``validation_step`` run through ``Trainer.validate`` (a fresh Trainer, no other callbacks);
    the demo LM, which has none, runs its ``training_step`` in eval mode (with autograd on, as in training:
    under ``no_grad`` torch's encoder fast path would skip the very layers the step runs)."""
    loader = loader if loader is not None else project.val_loader()
    obs = Observed()
    if project.has_validation:
        cb = _WatchCallback(lambda m: _Watch(m, project, obs))
        t = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[cb],
            default_root_dir=str(tmp_path) if tmp_path else None,
        )
        res = t.validate(module, dataloaders=loader, verbose=False)
        obs.metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
        return obs
    watch = _Watch(module, project, obs)
    was = module.training
    module.eval()
    try:
        for i, batch in enumerate(loader):
            watch.batch_start()
            loss = module.training_step(batch, i)
            watch.batch_end(batch)
            obs.metrics["loss_sum"] = obs.metrics.get("loss_sum", 0.0) + float(loss)
    finally:
        watch.close()
        module.train(was)
    return obs


def call(model: nn.Module, inputs: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = inputs
    return model(*args, **kwargs)


# ------------------------------------------------------------------------------------------- the file sink
class Sink:
    """What the callbacks logged through ``lightning_nas.tracking`` (its files, documented in the README)."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "nas_files"
        index = self.dir / "index.jsonl"
        self.index = [json.loads(x) for x in index.read_text().splitlines()] if index.exists() else []

    def keys(self, kind: str | None = None) -> set[str]:
        return {r["key"] for r in self.index if kind is None or r["kind"] == kind}

    def scalars(self, key: str) -> list[float]:
        path = self.dir / "scalars.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [r[key] for r in rows if key in r]

    def scalar_keys(self) -> set[str]:
        return self.keys("scalar")

    def tables(self, key: str) -> list[dict]:
        files = {r["file"] for r in self.index if r["key"] == key and r["kind"] == "table"}
        out = []
        for f in sorted(files):
            out += [json.loads(x) for x in (self.dir / f).read_text().splitlines()]
        return out

    def summary(self) -> dict:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}
