"""Shared plumbing of callbacks that change a model's structure mid-fit (pruning, low-rank).

* ``Schedule``: one-shot or gradual (linear / cubic a.k.a. AGP) targets over epochs or steps.
* ``rebuild_optimizers``: after parameters were replaced, re-run ``configure_optimizers`` through the strategy
  (re-wrapping DDP first), keep every param group's current learning rate, the LR schedulers' positions and
  the optimizer state of parameters whose shape did not change.
* ``install_restore_hook``: lets a checkpoint saved after a structural change load into a fresh, unchanged
  instance of the user's module. Lightning restores model weights *before* callback state, so each
  structural callback registers a replay function that runs inside the module's ``on_load_checkpoint``
  (called by Lightning with the whole checkpoint just before ``load_state_dict``); replays of several
  callbacks run in the order their changes were originally made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_nas._compat import rewrap_model
from lightning_nas._validate import check_choice, check_int

SCHEDULES = ("one_shot", "linear", "cubic", "agp")
UNITS = ("epoch", "step")


class Schedule:
    """Target fraction over time. ``cubic``/``agp`` (Zhu & Gupta 2017): ``s_t = s_f (1 - (1 - p)^3)`` with
    ``p = (t - start) / (end - start)``; ``linear``: ``s_t = s_f p``; ``one_shot``: ``s_f`` at ``start``.

    Events happen at ``start, start + every, ..., end`` (epochs or optimizer steps, per ``unit``).
    """

    def __init__(self, kind: str, start: int, end: int | None, every: int, unit: str) -> None:
        check_choice("schedule", kind, SCHEDULES)
        check_choice("unit", unit, UNITS)
        check_int("start_epoch" if unit == "epoch" else "start_step", start, 0)
        check_int("every_n_epochs" if unit == "epoch" else "every_n_steps", every, 1)
        end = start if end is None else end
        check_int("end_epoch" if unit == "epoch" else "end_step", end, 0)
        if end < start:
            raise ValueError(f"`end_{unit}`={end} is before `start_{unit}`={start}; it must be >= start")
        if kind == "one_shot":
            end = start
        self.kind, self.start, self.end, self.every, self.unit = kind, start, end, every, unit

    @classmethod
    def of(
        cls,
        kind: str,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        start_step: int | None = None,
        end_step: int | None = None,
        every_n_steps: int | None = None,
    ) -> Schedule:
        """From a callback's arguments: epochs by default, optimizer steps when ``start_step`` is given."""
        if start_step is None:
            if end_step is not None or every_n_steps is not None:
                raise ValueError(
                    f"`end_step`/`every_n_steps` (got {end_step}, {every_n_steps}) need `start_step`: "
                    "give `start_step` to schedule in optimizer steps"
                )
            return cls(kind, start_epoch, end_epoch, every_n_epochs, "epoch")
        if start_epoch != 0 or end_epoch is not None or every_n_epochs != 1:
            raise ValueError(
                f"`start_step`={start_step} schedules in optimizer steps: leave `start_epoch`, "
                f"`end_epoch` and `every_n_epochs` at their defaults (got {start_epoch}, {end_epoch}, "
                f"{every_n_epochs})"
            )
        return cls(kind, start_step, end_step, 1 if every_n_steps is None else every_n_steps, "step")

    def events(self) -> list[int]:
        ev = list(range(self.start, self.end + 1, self.every))
        if ev[-1] != self.end:
            ev.append(self.end)
        return ev

    def fraction(self, t: int) -> float:
        """Fraction of the final amount reached at event time ``t``."""
        if self.kind == "one_shot" or self.end == self.start:
            return 1.0 if t >= self.start else 0.0
        p = min(max((t - self.start) / (self.end - self.start), 0.0), 1.0)
        return p if self.kind == "linear" else 1.0 - (1.0 - p) ** 3

    def due(self, trainer: L.Trainer, done: list[int]) -> int | None:
        """The event time due now (not yet done), or ``None``."""
        now = trainer.current_epoch if self.unit == "epoch" else trainer.global_step
        pending = [e for e in self.events() if e <= now and e not in done]
        return max(pending) if pending else None


def rebuild_optimizers(trainer: L.Trainer, pl_module: L.LightningModule, names_before: dict[int, str]) -> None:
    """Recreate optimizers/schedulers for the changed ``pl_module``, carrying LR, schedule and moments.

    ``names_before`` maps ``id(param)`` to its name, taken before the change.
    """
    strategy = trainer.strategy
    if trainer.state.fn != "fit" or not trainer.optimizers:
        return
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(strategy.model, DistributedDataParallel):  # the DDP wrapper holds the old parameters
        rewrap_model(trainer, pl_module)
    old_state: dict[str, dict[str, Any]] = {}
    old_lrs = []
    for opt in trainer.optimizers:
        old_lrs.append([g.get("lr") for g in opt.param_groups])
        for p, st in opt.state.items():
            if id(p) in names_before:
                old_state[names_before[id(p)]] = st
    old_sched = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
    strategy.setup_optimizers(trainer)
    for cfg, st in zip(trainer.lr_scheduler_configs, old_sched):
        cfg.scheduler.load_state_dict(st)
    for opt, lrs in zip(trainer.optimizers, old_lrs):
        if len(lrs) == len(opt.param_groups):
            for g, lr in zip(opt.param_groups, lrs):
                if lr is not None:
                    g["lr"] = lr
    names_now = {id(p): n for n, p in pl_module.named_parameters()}
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            for p in g["params"]:
                st = old_state.get(names_now.get(id(p), ""))
                if st and all(v.shape == p.shape for v in st.values() if isinstance(v, torch.Tensor) and v.ndim):
                    opt.state[p] = st


def param_names(module: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


class _RestoreHook:
    """Replaces ``pl_module.on_load_checkpoint`` on one instance: replays structure, then the user's hook."""

    def __init__(self, original: Callable[[dict], Any]) -> None:
        self.original = original
        self.replayers: list[Callable[[dict], Sequence[tuple[float, Callable[[], None]]]]] = []

    def __call__(self, checkpoint: dict[str, Any]) -> Any:
        items: list[tuple[float, int, Callable[[], None]]] = []
        for i, rep in enumerate(self.replayers):
            items += [(order, i, fn) for order, fn in rep(checkpoint)]
        for _, _, fn in sorted(items, key=lambda t: (t[0], t[1])):
            fn()
        return self.original(checkpoint)


def install_restore_hook(
    pl_module: L.LightningModule, replayer: Callable[[dict], Sequence[tuple[float, Callable[[], None]]]]
) -> None:
    """Register ``replayer(checkpoint) -> [(order, fn), ...]`` to run before ``pl_module``'s weights load."""
    hook = pl_module.__dict__.get("on_load_checkpoint")
    if not isinstance(hook, _RestoreHook):
        hook = _RestoreHook(pl_module.on_load_checkpoint)
        pl_module.__dict__["on_load_checkpoint"] = hook
    if replayer not in hook.replayers:
        hook.replayers.append(replayer)


def spawned(trainer: L.Trainer) -> bool:
    """True under a spawn/fork launcher (``ddp_spawn``): the main process keeps its own, unchanged module and
    loads the worker's final ``state_dict`` into it, so that state dict must have the original shapes."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return launcher is not None and type(launcher).__name__ == "_MultiProcessingLauncher"


def copy_module(pl_module: L.LightningModule, *keep: Any) -> L.LightningModule:
    """Deep copy of ``pl_module`` that shares (does not copy) the trainer and the objects in ``keep``."""
    import copy

    memo = {id(pl_module._trainer): pl_module._trainer} if getattr(pl_module, "_trainer", None) else {}
    memo.update({id(k): k for k in keep})
    return copy.deepcopy(pl_module, memo)
