"""Shared by the timing benchmarks (``end_of_fit.py``, ``scale.py``): time inside a callback's own code, the
wall-clock phases of a fit, synthetic data, quiet trainers, and the median of plain fits interleaved with the rest.

* ``time_hooks(cb, hooks)``: wraps the named hooks of one callback instance and adds the wall time spent inside
  them to ``cb._hook_s`` (per hook name); ``time_callback(cb)`` wraps every hook *and* every private method (the
  step listeners a callback registers with ``ModelIO`` are private methods), outermost calls only, so the total
  is the time spent in the callback's own code during a fit.
* ``FitClock``: a callback (put it first) that stamps the phases of a fit: the first training batch, each
  training epoch's start, the start of ``on_train_end``, and the end of the fit; with ``start_s``, ``epochs``
  and ``end_s`` read from them.
* ``Plain``: plain fits interleaved with the measured ones; its median is the reference every ratio uses.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

_OWN = ("setup", "teardown", "state_dict", "load_state_dict")


def quiet() -> None:
    """Silence warnings and Lightning's info lines for a benchmark run."""
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def sync(device: torch.device | str | None) -> None:
    """Wait for the accelerator (timings of asynchronous CUDA work end when the work does)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_hooks(cb: Any, hooks: Iterable[str], skip: Iterable[str] = ()) -> Any:
    """Wrap ``hooks`` of ``cb`` (an instance) to add the wall time spent inside them to ``cb._hook_s[name]``
    (hooks in ``skip`` are wrapped but not counted); returns ``cb``."""
    cb._hook_s = defaultdict(float)
    skip = set(skip)
    for name in hooks:
        fn = getattr(cb, name, None)
        if fn is None:
            continue

        def wrapper(*a: Any, _fn: Callable = fn, _name: str = name, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                if _name not in skip:
                    cb._hook_s[_name] += time.perf_counter() - t0

        setattr(cb, name, wrapper)
    return cb


def time_callback(cb: Any) -> Any:
    """Wrap every Lightning hook the callback overrides and every private method of it (its step listeners among
    them); the outermost call's wall time goes to ``cb._hook_s[<outermost name>]``. Returns ``cb``."""
    cls = type(cb)
    names = []
    for n in dir(cls):
        if n.startswith("__") or not _is_method(cls, n):
            continue
        if n.startswith("on_") or n in _OWN:
            if getattr(cls, n) is not getattr(L.Callback, n, None):
                names.append(n)
        elif n.startswith("_"):
            names.append(n)
    cb._hook_s = defaultdict(float)
    depth = [0]
    for name in names:
        fn = getattr(cb, name)

        def wrapper(*a: Any, _fn: Callable = fn, _name: str = name, **k: Any) -> Any:
            if depth[0]:
                return _fn(*a, **k)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                depth[0] -= 1
                cb._hook_s[_name] += time.perf_counter() - t0

        setattr(cb, name, wrapper)
    return cb


def _is_method(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in vars(klass):
            return callable(vars(klass)[name]) and not isinstance(vars(klass)[name], (staticmethod, classmethod, type))
    return False


class FitClock(L.Callback):
    """Stamps the phases of a fit (put it first in the callback list; it reads the clock before the others run).

    ``start_s``: from ``trainer.fit`` to the first training batch (set-up, sanity check, epoch-0 start work);
    ``epochs``: the duration of each training epoch (from one epoch's start to the next, the last one to the start
    of ``on_train_end``: validation and every callback's epoch-end work included); ``end_s``: from
    ``on_train_end`` to the return of ``trainer.fit``. ``steps``: the wall time of each training step (first
    callback's ``on_train_batch_start`` to ``on_train_batch_end`` of the closer, which goes last)."""

    def __init__(self, device: Any = None, watch: Any = None) -> None:
        self.device, self.watch = device, watch  # watch: a callback wrapped by time_callback
        self.t_call = self.t_first_batch = self.t_train_end = self.t_done = 0.0
        self.epoch_starts: list[float] = []
        self.own_marks: list[float] = []  # the watched callback's time so far, at each epoch start and train end
        self.steps: list[float] = []
        self._t_step = 0.0
        self.in_step = False
        self.closer = _StepCloser(self)

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def _own(self) -> float:
        return sum(self.watch._hook_s.values()) if self.watch is not None else 0.0

    def fit(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.t_call = self._now()
        trainer.fit(*args, **kwargs)
        self.t_done = self._now()
        self.own_done = self._own()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_starts.append(self._now())
        self.own_marks.append(self._own())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.in_step = True
        self._t_step = self._now()
        if not self.t_first_batch:
            self.t_first_batch = self._t_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t_train_end = self._now()
        self.own_marks.append(self._own())

    @property
    def start_s(self) -> float:
        return self.t_first_batch - self.t_call

    @property
    def epochs(self) -> list[float]:
        stamps = [*self.epoch_starts, self.t_train_end]
        return [b - a for a, b in zip(stamps, stamps[1:])]

    @property
    def end_s(self) -> float:
        return self.t_done - self.t_train_end

    @property
    def own_epochs(self) -> list[float]:
        """The watched callback's own time in each training epoch (its epoch-start and epoch-end work included)."""
        return [b - a for a, b in zip(self.own_marks, self.own_marks[1:])]

    @property
    def own_end_s(self) -> float:
        return self.own_done - self.own_marks[-1] if self.own_marks else 0.0


class _StepCloser(L.Callback):
    def __init__(self, clock: FitClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.clock.steps.append(self.clock._now() - self.clock._t_step)
        self.clock.in_step = False


def trainer(root: Path, callbacks: list, epochs: int = 1, accelerator: str = "cpu", **kw: Any) -> L.Trainer:
    """A quiet single-device trainer (no logger, no checkpoints, no progress bar)."""
    opts: dict[str, Any] = dict(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
    )
    opts.update(kw)
    return L.Trainer(**opts)


def synthetic_images(
    steps: int, batch: int = 64, size: int = 32, channels: int = 3, classes: int = 10, val_batches: int = 4
) -> tuple[Any, Any]:
    """Train and validation loaders of Gaussian images and random labels (timing only; seeded)."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    n, nv = batch * steps, batch * val_batches
    x, y = torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
    xv, yv = torch.randn(nv, channels, size, size, generator=g), torch.randint(0, classes, (nv,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch), DataLoader(TensorDataset(xv, yv), batch_size=batch)


def resnet_module(width: int = 64, searchable: bool = False, depth: int = 18, lr: float = 1e-3) -> L.LightningModule:
    """``Classifier`` around a ResNet-18/34/50 of base ``width`` (``searchable``: layer4's last conv is a
    ``LayerChoice`` of conv3/conv1, for the search callbacks)."""
    from torch import nn

    from lightning_nas import space
    from lightning_nas.models import Classifier, resnet18, resnet34, resnet50

    net = {18: resnet18, 34: resnet34, 50: resnet50}[depth](10, width)
    if searchable:
        c = width * 8
        net.layer4[1].conv2 = space.LayerChoice(
            {"conv3": nn.Conv2d(c, c, 3, padding=1, bias=False), "conv1": nn.Conv2d(c, c, 1, bias=False)},
            label="layer4_conv",
        )
    torch.manual_seed(0)
    return Classifier(net, lr=lr)


class Plain:
    """Plain fits interleaved with the measured ones: ``maybe_run(k)`` runs one every ``every`` measured fits;
    ``median(get)`` is the median of ``get(result)`` over them (the reference every ratio uses)."""

    def __init__(self, run: Callable[[str], Any], every: int = 2) -> None:
        self.run_one, self.every, self.results = run, every, []

    def run(self) -> Any:
        r = self.run_one(f"plain{len(self.results)}")
        self.results.append(r)
        return r

    def maybe_run(self, k: int) -> None:
        if k % self.every == self.every - 1:
            self.run()

    def median(self, get: Callable[[Any], float]) -> float:
        return statistics.median(get(r) for r in self.results)

    def values(self, get: Callable[[Any], float]) -> list[float]:
        return [get(r) for r in self.results]
