"""Shared by the explain callbacks: where the probe comes from, and the forward contract it must meet.

By default a probe is what the model receives: samples of the inputs the user's own validation steps (training
steps when no validation ran) fed the model, collected by ``ProbeSource`` from the fit's ``ModelIO``, and
explained through the route the step runs. With ``forward_fn=`` or ``batch_fn=`` (the overrides), the probe is
taken from the raw validation batches and explained through ``forward_fn(pl_module, x)``, as the user says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from typing_extensions import override

from lightning_nas._compat import val_data_source
from lightning_nas._modules import eval_mode
from lightning_nas.callbacks._capture import ProbeCollector, ProbeSet
from lightning_nas.callbacks._route import Route
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.explain._attribution_utils import forward_of, required_inputs
from lightning_nas.explain.attribution import Probe, select_probe

if TYPE_CHECKING:
    from lightning_nas.callbacks.base import LightningNASCallback


def val_data(trainer: L.Trainer, pl_module: L.LightningModule, owner: str) -> Any:
    """The validation dataloader(s) of this fit, before the val loop loads them; ``ValueError`` if none."""
    source = val_data_source(trainer)
    data = None
    try:  # Lightning's own source resolves fit(val_dataloaders=...), a datamodule and the module's hook alike
        if source is not None and source.is_defined():
            data = source.dataloader()
    except Exception:
        data = None
    datamodule = getattr(trainer, "datamodule", None)  # Lightning's data connector sets it (undeclared on Trainer)
    if data is None and datamodule is not None and _overrides(datamodule, "val_dataloader"):
        data = datamodule.val_dataloader()
    if data is None and _overrides(pl_module, "val_dataloader"):
        data = pl_module.val_dataloader()
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], torch.Tensor):
        data = data[0]  # several val loaders: the first one
    if isinstance(data, dict):
        data = next(iter(data.values()), None)
    if data is None:
        raise ValueError(
            f"{owner} needs validation data for its probe set: pass `val_dataloaders` to "
            "`trainer.fit`, or a datamodule with `val_dataloader()`"
        )
    return data


def _overrides(obj: Any, name: str) -> bool:
    fn = getattr(type(obj), name, None)
    base = (
        getattr(L.LightningDataModule, name, None)
        if isinstance(obj, L.LightningDataModule)
        else getattr(L.LightningModule, name, None)
    )
    return fn is not None and fn is not base


def resolve_probe(
    trainer: L.Trainer, pl_module: L.LightningModule, owner: str, n_samples: int, seed: int, batch_fn: Callable | None
) -> Probe:
    return select_probe(val_data(trainer, pl_module, owner), n_samples, seed=seed, batch_fn=batch_fn)


def check_forward(pl_module: L.LightningModule, probe: Probe, forward_fn: Callable | None, owner: str) -> torch.Tensor:
    """Run the model once on two probe samples; it must return ``(batch, classes)`` logits."""
    if forward_fn is None and required_inputs(pl_module) > 1:
        raise ValueError(
            f"{owner}: {type(pl_module).__name__}.forward takes {required_inputs(pl_module)} inputs; "
            "pass `forward_fn=lambda model, x: ...` returning (batch, classes) logits"
        )
    with eval_mode(pl_module):
        with torch.no_grad():
            out = forward_of(pl_module, forward_fn)(probe.x[:2].to(pl_module.device))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != min(2, len(probe)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: the model must map a batch to (batch, classes) logits, got {shape}; pass "
            "`forward_fn=lambda model, x: ...` to adapt it"
        )
    return out


def find_module(pl_module: nn.Module, name: str, argname: str) -> nn.Module:
    modules = dict(pl_module.named_modules())
    if name not in modules:
        raise ValueError(
            f"`{argname}`={name!r} is not a module of {type(pl_module).__name__}; some that are: "
            f"{[n for n in modules if n][:12]}"
        )
    return modules[name]


def find_embedding(pl_module: nn.Module, name: str | None) -> nn.Module:
    if name is not None:
        mod = find_module(pl_module, name, "embedding")
        if not isinstance(mod, nn.Embedding):
            raise ValueError(f"`embedding`={name!r} must name an nn.Embedding, got {type(mod).__name__}")
        return mod
    embs = [n for n, m in pl_module.named_modules() if isinstance(m, nn.Embedding)]
    if len(embs) != 1:
        raise ValueError(f"token inputs need the nn.Embedding to attribute over: pass `embedding=` (found {embs})")
    return dict(pl_module.named_modules())[embs[0]]


class ProbeSource:
    """The probe of an explain callback: collected from what the model receives (default), or resolved from the raw
    validation data when the user passes ``forward_fn``/``batch_fn``. ``fwd``/``rest`` are what the explanation
    functions take: ``forward_fn(model, x, *rest)`` and the model's other inputs."""

    def __init__(
        self, owner: str, n_samples: int, seed: int, forward_fn: Callable | None, batch_fn: Callable | None
    ) -> None:
        self.owner, self.n_samples, self.seed = owner, n_samples, seed
        self.forward_fn, self.batch_fn = forward_fn, batch_fn
        self.captured = forward_fn is None and batch_fn is None
        self.collector = ProbeCollector(n_samples, seed)
        self.route: Route | None = None

    def listen(
        self,
        callback: LightningNASCallback,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """Collect samples from this fit's steps (default mode). Without a validation loop, ``ready()`` runs in the
        first training step, before its backward pass, so the probe is checked before any weight changes."""
        if not self.captured:
            return
        from lightning.pytorch.utilities.model_helpers import is_overridden

        self.collector = ProbeCollector(self.n_samples, self.seed)
        io = callback.model_io(trainer, pl_module)
        io.listen(callback, "eval", self.collector)
        io.listen(callback, "train", self.collector)
        if ready is not None and not is_overridden("validation_step", pl_module):
            io.listen(callback, "train", lambda record: ready() if self._first_train(record) else None)

    def _first_train(self, record: Any) -> bool:
        first = not getattr(self, "_trained", False)
        self._trained = True
        return first

    def preview(self, pl_module: L.LightningModule) -> ProbeSet | None:
        """A probe from the samples seen so far, however few (to check the model early); not the probe kept."""
        from lightning_nas.callbacks._capture import ModelIO

        self.route = ModelIO.of(pl_module).route("eval")
        return self.collector.probe(partial=True) if self.route is not None and self.collector.ready else None

    def resolve(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Probe:
        """The override mode's probe, from the raw validation data (``ValueError`` if there is none)."""
        return resolve_probe(trainer, pl_module, self.owner, self.n_samples, self.seed, self.batch_fn)

    def collected(self, pl_module: L.LightningModule, final: bool = True) -> ProbeSet | None:
        """The default mode's probe from the samples seen so far (``None`` before any step, or while the pool is
        still filling and not ``final``)."""
        from lightning_nas.callbacks._capture import ModelIO

        self.route = ModelIO.of(pl_module).route("eval")
        if self.route is None or not self.collector.ready or not (final or self.collector.full):
            return None
        try:
            return self.collector.probe()
        except ValueError as err:
            raise ValueError(f"{self.owner}: {err}") from None

    def check_size(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``n_samples`` no larger than the validation set, when its size is known now."""
        try:
            data = val_data(trainer, pl_module, self.owner)
            size = len(data.dataset)
        except Exception:
            return
        if self.n_samples > size:
            raise ValueError(
                f"{self.owner}: `n_samples` must be <= the {size} validation samples available, got {self.n_samples}"
            )

    def forward(self, probe: Probe | ProbeSet) -> tuple[Callable | None, tuple]:
        if isinstance(probe, ProbeSet):
            assert self.route is not None  # a ProbeSet is collected on the route
            return probe.forward_fn(self.route), tuple(probe.rest)
        return self.forward_fn, ()

    def check(self, pl_module: L.LightningModule, probe: Probe | ProbeSet) -> torch.Tensor:
        """Run the model on two probe samples; it must give ``(batch, classes)`` scores."""
        fwd, rest = self.forward(probe)
        if isinstance(probe, Probe):
            return check_forward(pl_module, probe, self.forward_fn, self.owner)
        n = len(probe)
        with eval_mode(pl_module):
            try:
                with torch.no_grad():
                    two = [t[:2] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == n else t for t in rest]
                    return forward_of(pl_module, fwd)(
                        probe.x[:2].to(pl_module.device), *move_data_to_device(two, pl_module.device)
                    )
            except ValueError as err:
                raise ValueError(
                    f"{self.owner}: {err}; pass `forward_fn=lambda model, x: ...` returning (batch, classes) scores"
                ) from None


class ProbedCallback(LightningNASCallback):
    """A callback that explains the model on probe samples taken from the real steps: ``setup`` listens for the
    probe through ``self._source`` (a ``ProbeSource``) and calls ``self._preview(pl_module)`` once it is ready;
    ``teardown`` releases the capture."""

    _source: ProbeSource

    def _preview(self, pl_module: L.LightningModule) -> None:
        """Check the model on the first probe rows (raise ``ValueError`` naming the override to use)."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._source.listen(self, trainer, pl_module, ready=lambda: self._preview(pl_module))
        super().setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.release_model_io(pl_module)
