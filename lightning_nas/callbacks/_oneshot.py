"""What the one-shot NAS callbacks share: supernet set-up, held-out batches, quiet loss, state, logging."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from lightning_nas import space
from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_int, check_type
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.explain import architecture as xarch
from lightning_nas.search.oneshot import Supernet, recalibrate_batchnorm


@contextmanager
def _quiet(pl_module: L.LightningModule) -> Iterator[None]:
    """Silence ``self.log``/``self.log_dict`` while the callback reuses the user's ``training_step``."""
    # shadows the methods on this instance only, until the `del`s below
    pl_module.log = lambda *a, **k: None  # type: ignore[method-assign]
    pl_module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log
        del pl_module.log_dict


def first_loader(loaders: Any) -> Any:
    if loaders is None:
        return None
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


class OneShotCallback(LightningNASCallback):
    """Base of ``DifferentiableNAS`` and ``SubnetSampling``: builds the ``Supernet`` in ``setup``."""

    _mode = "darts"

    def __init__(self, seed: int | None = None, recalibrate_bn: bool = True, bn_batches: int = 20) -> None:
        super().__init__()
        if seed is not None:
            check_int("seed", seed, 0)
        self.recalibrate_bn = check_type("recalibrate_bn", recalibrate_bn, bool)
        self.bn_batches = check_int("bn_batches", bn_batches, 1)
        self._bn_data: list[Any] = []
        self.seed = seed
        self._supernet: Supernet | None = None
        self._module: L.LightningModule | None = None
        self._pending: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._logged_epoch = -1
        self._held_out_pos = 0
        self._held_iter: Any = None
        self._val_loader: Any = None
        self._reasons: dict[str, str] = {}
        self._table: list[list] = []
        self._ablation: dict[str, dict[str, float]] = {}

    @property
    def _sn(self) -> Supernet:
        """The supernet ``setup`` built (a clear error for a hook that runs before it)."""
        if self._supernet is None:
            raise RuntimeError(f"{type(self).__name__}: the supernet is built in `setup`, which has not run yet")
        return self._supernet

    # ------------------------------------------------------------------ set-up
    def _supernet_kwargs(self) -> dict[str, Any]:
        return {}

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = type(self).__name__
        decs = {lb: d for lb, d in space.decisions(pl_module).items() if d.kind in ("layer", "input")}
        if not decs:
            raise ValueError(
                f"{name}: {type(pl_module).__name__} has no LayerChoice/InputChoice to search; put "
                "lightning_nas.space.LayerChoice (or NNI's) in the model, or remove the callback"
            )
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{name} needs automatic optimization: it reuses `training_step` to compute the "
                "held-out loss, which with automatic_optimization=False would also step your "
                "optimizer; set automatic_optimization=True"
            )
        if self._mode in ("gdas", "spos") and trainer.world_size > 1:
            kwargs = getattr(trainer.strategy, "_ddp_kwargs", {})
            if not kwargs.get("find_unused_parameters", False):
                raise ValueError(
                    f"{name}(mode={self._mode!r}) runs one path per step, so under DDP the other "
                    "candidates have no gradient: use strategy=DDPStrategy(find_unused_parameters=True)"
                )

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        # no seed: follow torch's (seed_everything) without consuming the user's random stream
        seed = self.seed if self.seed is not None else int(torch.initial_seed() % (2**31 - 1))
        seed = int(self._broadcast(trainer, seed))
        self._supernet = Supernet(
            pl_module, self._mode, seed=seed, device=trainer.strategy.root_device, **self._supernet_kwargs()
        )
        self._module = pl_module
        if pl_module.example_input_array is not None:  # shape check before the first step when we can
            x = move_data_to_device(pl_module.example_input_array, pl_module.device)
            self._supernet.fixed = {lb: 0 for lb in self._supernet.labels}  # alpha may be on the target device
            try:
                with torch.no_grad(), eval_mode(pl_module):
                    pl_module(*x) if isinstance(x, tuple) else pl_module(x)
            finally:
                self._supernet.fixed = None
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_loader = first_loader(trainer.val_dataloaders)
        self._held_iter = None

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if self._supernet is not None:  # leave the user's module with its own choice modules, not mixed ops
            self._supernet.restore()

    # ------------------------------------------------------------------ per-epoch explanations
    def _epoch_done(self, trainer: L.Trainer) -> None:
        """Log this epoch's decisions (subclasses); runs once per epoch, before the epoch-end validation."""

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # at the last batch, i.e. before the epoch-end validation in which ModelCheckpoint saves: the
        # checkpoint then holds this epoch's history
        if batch_idx + 1 >= trainer.num_training_batches and self._logged_epoch != trainer.current_epoch:
            self._logged_epoch = trainer.current_epoch
            self._epoch_done(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._logged_epoch != trainer.current_epoch:  # e.g. a loader of unknown length
            self._logged_epoch = trainer.current_epoch
            self._epoch_done(trainer)

    # ------------------------------------------------------------------ data and loss
    def _loss(self, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> torch.Tensor:
        """The user's own loss (``training_step``'s output) on ``batch``, without logging."""
        with _quiet(pl_module):
            out = pl_module.training_step(batch, batch_idx)
        loss = out.get("loss") if isinstance(out, dict) else out
        if not isinstance(loss, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} needs `training_step` to return the loss (a tensor or a dict "
                f"with 'loss'), got {type(out).__name__}"
            )
        return loss

    def _held_out(self, trainer: L.Trainer, batch: Any) -> Any:
        """The next validation batch (cycling), or the second half of ``batch`` when there is no val loader."""
        if self._val_loader is None:
            n = _batch_len(batch)
            return apply_to_collection(batch, torch.Tensor, lambda t: t[n // 2 :] if t.ndim and t.shape[0] == n else t)
        if self._held_iter is None:
            self._held_iter = iter(self._val_loader)
            skip = self._held_out_pos % max(1, len(self._val_loader))
            for _ in range(skip):
                next(self._held_iter)
        try:
            b = next(self._held_iter)
        except StopIteration:
            self._held_iter = iter(self._val_loader)
            b = next(self._held_iter)
        self._held_out_pos += 1
        return trainer.strategy.batch_to_device(b)

    @staticmethod
    def _first_half(batch: Any) -> Any:
        n = _batch_len(batch)
        return apply_to_collection(batch, torch.Tensor, lambda t: t[: n // 2] if t.ndim and t.shape[0] == n else t)

    def _eval_batches(self, trainer: L.Trainer, n: int) -> list[Any]:
        loader = self._val_loader or first_loader(trainer.train_dataloader)
        return [trainer.strategy.batch_to_device(b) for b in itertools.islice(iter(loader), n)]

    def _mean_loss(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Any]) -> float:
        """Mean loss over ``batches`` in eval mode, averaged over DDP ranks."""
        with eval_mode(pl_module):
            with torch.no_grad():
                loss = torch.stack([self._loss(pl_module, b, i).detach().float() for i, b in enumerate(batches)]).mean()
        if trainer.world_size > 1:
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
        return float(loss)

    def _reduce(self, trainer: L.Trainer) -> Any:
        if trainer.world_size > 1:
            return lambda t: trainer.strategy.reduce(t, reduce_op="mean")
        return None

    # ------------------------------------------------------------------ explanations
    def _log_probabilities(
        self, trainer: L.Trainer, probs: dict[str, dict[str, float]], extra: dict[str, float], record: bool = True
    ) -> None:
        scalars = dict(extra)
        for lb, p in probs.items():
            scalars.update({f"nas/{lb}/{c}": v for c, v in p.items()})
            scalars[f"nas/{lb}/entropy"] = xarch.entropy(p)
        tracker = self.tracker(trainer)
        tracker.log_scalars(scalars)
        if not record:
            return
        self.history.append({"epoch": trainer.current_epoch, "probs": probs})
        xs = [h["epoch"] for h in self.history]
        for lb in probs:
            ys = {c: [h["probs"][lb][c] for h in self.history] for c in probs[lb]}
            tracker.log_line_series(f"nas/{lb}/history", xs, ys, title=f"{lb}: candidate probability", xname="epoch")

    def _log_final(
        self, trainer: L.Trainer, probs: dict[str, dict[str, float]], score_name: str, ablation_kind: str = "remove"
    ) -> None:
        self._table = xarch.decision_table(probs)
        self._reasons = xarch.reasons(self._table, self._ablation, score_name, ablation_kind)
        tracker = self.tracker(trainer)
        tracker.log_table("nas/decisions", xarch.TABLE_COLUMNS, self._table)
        rows = [[lb, c, probs[lb][c], d] for lb, abl in self._ablation.items() for c, d in abl.items()]
        if rows:
            tracker.log_table("nas/ablation", ["label", "candidate", score_name, "delta_val_loss"], rows)
        summary = {f"nas/arch/{lb}": c for lb, c in self.export().items()}
        summary.update({f"nas/reason/{lb}": r for lb, r in self._reasons.items()})
        tracker.log_summary(summary)

    # ------------------------------------------------------------------ results
    def export(self) -> dict[str, str]:
        """The architecture found: ``{label: candidate}``."""
        if self._supernet is None:
            raise RuntimeError(f"{type(self).__name__}.export(): call trainer.fit first")
        return self._supernet.export()

    def best_model(self) -> torch.nn.Module:
        """The user's module frozen to ``export()`` (a deep copy with no search machinery).

        With ``recalibrate_bn`` (default) its BatchNorm statistics are re-estimated (cumulative average, SPOS Sec.
        3.3) on ``bn_batches`` training batches run through the user's own ``training_step`` on the copy: the
        supernet's running statistics mix every candidate's activations, which is not what the chosen path
        produces.
        """
        if self._module is None:
            raise RuntimeError(f"{type(self).__name__}.best_model(): call trainer.fit first")
        model = space.freeze(self._module, self.export())
        if (
            self.recalibrate_bn
            and self._bn_data
            and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        ):
            device = next(model.parameters()).device
            with eval_mode(model):
                recalibrate_batchnorm(
                    model,
                    lambda b: self._loss(cast(L.LightningModule, model), move_data_to_device(b, device), 0),
                    self._bn_data,
                )
        return model

    def _keep_bn_batches(self, trainer: L.Trainer) -> None:
        """The training batches ``best_model()`` re-estimates BatchNorm on (raw, as the loader gives them)."""
        loader = first_loader(trainer.train_dataloader)
        self._bn_data = (
            list(itertools.islice(iter(loader), self.bn_batches)) if self.recalibrate_bn and loader is not None else []
        )

    def reasons(self) -> dict[str, str]:
        """One line per decision: what won, by how much, and what removing it costs (for the model card)."""
        return dict(self._reasons)

    def decision_table(self) -> list[list]:
        """Rows of ``explain.architecture.TABLE_COLUMNS`` for the final decisions."""
        return [list(r) for r in self._table]

    def ablation(self) -> dict[str, dict[str, float]]:
        return {lb: dict(v) for lb, v in self._ablation.items()}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._supernet is None:
            return dict(self._pending or {})
        return {
            "supernet": self._supernet.state_dict(),
            "history": list(self.history),
            "held_out_pos": self._held_out_pos,
            **self._extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._supernet is None:
            self._pending = dict(state_dict)
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        if "supernet" not in state:
            raise KeyError(f"{type(self).__name__}: checkpoint state lacks 'supernet'")
        self._sn.load_state_dict(state["supernet"])
        self.history = list(state["history"])
        self._logged_epoch = self.history[-1]["epoch"] if self.history else -1
        self._held_out_pos = int(state["held_out_pos"])
        self._held_iter = None
        self._load_extra_state(state)


def _batch_len(batch: Any) -> int:
    sizes: list[int] = []
    apply_to_collection(batch, torch.Tensor, lambda t: sizes.append(t.shape[0]) if t.ndim else None)
    if not sizes or sizes[0] < 2:
        raise ValueError(
            "without a validation loader the architecture step splits each training batch in two, "
            "which needs a batch of at least 2 samples"
        )
    return sizes[0]
