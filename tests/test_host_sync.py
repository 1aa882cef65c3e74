"""No per-step host synchronisation on the default path of any callback.

A host sync (``.item()``, ``.cpu()``, ``.to("cpu")``, ``.tolist()``, ``.numpy()``, ``float(t)``, ``int(t)``,
``bool(t)``, a boolean-mask index, ``nonzero``, ``torch.equal``/``allclose``/``unique``/``masked_select``) makes
the CPU wait for the accelerator: once per step it stalls the pipeline of every GPU fit. On CPU nothing waits, but
the calls are the same, so this test counts them there (and, the same way, tensors made without a device by
``torch.zeros``, ``torch.tensor``, ``torch.arange``... : on a GPU fit each would be a host tensor and a copy per
step, or a device mismatch): the tensor methods are patched while the training steps
run (from the first callback's ``on_train_batch_start`` to the last callback's ``on_train_batch_end``, which covers
every per-step hook, listener and forward hook in between), and each call is charged to the innermost
``lightning_nas`` frame that made it. The user's own module (``lightning_nas/models.py``, an ordinary
LightningModule that logs its loss), Lightning's own loop and the optimizer's own bookkeeping (``torch/optim``, run
by every step with or without a callback) are not charged, which isolates the callbacks' contribution. The first
and last training batch of the epoch are left out: the route to the logits is found once per fit in the first, and
epoch-level work runs at the last (once per epoch, not per step). Validation steps are counted the same way
(listeners run in every one of them).
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

import lightning_nas
import lightning_nas.callbacks
from lightning_nas import space
from lightning_nas.models import Classifier, DigitsCNN

_PKG = Path(lightning_nas.__file__).resolve().parent
_USER_CODE = (_PKG / "models.py", _PKG / "data")  # stands for the user's own LightningModule and data
_METHODS = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")
_FUNCTIONS = ("equal", "allclose", "nonzero", "unique", "masked_select")
# factories that make a tensor on the CPU unless told a device: in a step on a GPU, a host tensor (and a copy)
_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "as_tensor", "arange", "rand", "randn", "randint", "linspace")
_OPTIM = Path(torch.optim.__file__).resolve().parent
STEPS = 6

# (file, function) -> why a host read there is not a device sync or cannot be avoided
ALLOWED = {
    ("search/oneshot/supernet.py", "resample"): "SPOS/GDAS draw paths from a CPU generator: host tensors only",
    ("callbacks/nas.py", "on_validation_batch_start"): "SPOS validation paths from a CPU generator: host only",
    ("search/oneshot/supernet.py", "_gdas_picks"): "GDAS (not the default mode): the sampled path decides which "
    "module runs, one read of all decisions per draw",
    ("search/oneshot/supernet.py", "weights"): "GDAS (not the default mode) in evaluation: the best path decides "
    "which module runs",
}


def _site() -> tuple[str, str] | None:
    """``(file:line, function)`` of the innermost lightning_nas frame on the stack (None: not charged)."""
    f = sys._getframe(2)
    while f is not None:
        path = Path(f.f_code.co_filename)
        if path.is_relative_to(_OPTIM):
            return None
        if path.is_relative_to(_PKG) and path != Path(__file__):
            if any(path == u or path.is_relative_to(u) for u in _USER_CODE):
                return None
            rel = path.relative_to(_PKG).as_posix()
            if (rel, f.f_code.co_name) in ALLOWED:
                return None
            return f"lightning_nas/{rel}:{f.f_lineno} ({f.f_code.co_name})", f.f_code.co_name
        f = f.f_back
    return None


class SyncCounter(L.Callback):
    """Count host syncs charged to lightning_nas code inside training (and validation) steps.

    Put one instance first and ``counter.closer`` last in the callback list."""

    def __init__(self) -> None:
        self.open: str | None = None
        self.step = -1
        self.sites: Counter[tuple[str, str, str]] = Counter()  # (phase, site, method) -> calls
        self._saved: dict[str, Any] = {}
        self.closer = _Closer(self)

    def _charge(self, what: str) -> None:
        if self.open is not None:
            site = _site()
            if site is not None:
                self.sites[(self.open, site[0], what)] += 1

    def _patch(self) -> None:
        counter = self

        for name in _METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapper(t: torch.Tensor, *a: Any, _orig: Callable = original, _name: str = name, **k: Any) -> Any:
                counter._charge(_name)
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        getitem, to = torch.Tensor.__getitem__, torch.Tensor.to
        self._saved.update({"__getitem__": getitem, "to": to})

        def masked_getitem(t: torch.Tensor, idx: Any) -> Any:
            if _has_mask(idx):
                counter._charge("mask index")
            return getitem(t, idx)

        def to_cpu(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            if "cpu" in a or k.get("device") == "cpu":  # a hard-coded move to the host
                counter._charge('to("cpu")')
            return to(t, *a, **k)

        torch.Tensor.__getitem__ = masked_getitem
        torch.Tensor.to = to_cpu
        for name in _FUNCTIONS:  # functions that return a Python value computed on the device
            original = getattr(torch, name)
            self._saved[f"torch.{name}"] = original

            def fn(*a: Any, _orig: Callable = original, _name: str = name, **k: Any) -> Any:
                counter._charge(f"torch.{_name}")
                return _orig(*a, **k)

            setattr(torch, name, fn)

        for name in _FACTORIES:
            original = getattr(torch, name)
            self._saved[f"torch.{name}"] = original

            def factory(*a: Any, _orig: Callable = original, _name: str = name, **k: Any) -> Any:
                if k.get("device") is None:
                    counter._charge(f"torch.{_name} without a device")
                return _orig(*a, **k)

            setattr(torch, name, factory)

    def _unpatch(self) -> None:
        for name, fn in self._saved.items():
            setattr(torch, name[6:], fn) if name.startswith("torch.") else setattr(torch.Tensor, name, fn)
        self._saved = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._patch()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unpatch()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unpatch()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.step += 1
        self.open = "train" if 0 < idx < trainer.num_training_batches - 1 else None

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.open = None if trainer.sanity_checking else "eval"

    def report(self) -> str:
        return "\n".join(f"  {phase:<5} {site} {m} x{n}" for (phase, site, m), n in sorted(self.sites.items()))


def _has_mask(idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _Closer(L.Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.counter.open = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.counter.open = None


class _SearchNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.block = space.LayerChoice(
            {"conv3": nn.Conv2d(c, c, 3, padding=1), "conv1": nn.Conv2d(c, c, 1), "skip": nn.Identity()},
            label="block",
        )
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _teacher() -> nn.Module:
    torch.manual_seed(1)
    return DigitsCNN(8).eval()


# every public callback at its defaults (the arguments given are the ones without a default)
CALLBACKS: dict[str, tuple[Callable[[], L.Callback], bool]] = {
    "DifferentiableNAS": (lambda: lightning_nas.callbacks.DifferentiableNAS(), True),
    "DifferentiableNAS-gdas": (lambda: lightning_nas.callbacks.DifferentiableNAS(mode="gdas"), True),
    "SubnetSampling": (lambda: lightning_nas.callbacks.SubnetSampling(), True),
    "StructuredPruning": (lambda: lightning_nas.callbacks.StructuredPruning(), False),
    "MagnitudePruning": (lambda: lightning_nas.callbacks.MagnitudePruning(), False),
    "LowRankFactorization": (lambda: lightning_nas.callbacks.LowRankFactorization(), False),
    "QuantizationAware": (lambda: lightning_nas.callbacks.QuantizationAware(measure=False), False),
    "KnowledgeDistillation": (lambda: lightning_nas.callbacks.KnowledgeDistillation(_teacher()), False),
    "AttributionMonitor": (lambda: lightning_nas.callbacks.AttributionMonitor(), False),
    "TrainingDynamics": (lambda: lightning_nas.callbacks.TrainingDynamics(), False),
    "DecisionPaths": (lambda: lightning_nas.callbacks.DecisionPaths(), False),
    "ArchitectureView": (lambda: lightning_nas.callbacks.ArchitectureView(), False),
    # watching the fit's own validation is not the default (stages validate, predict) but is the per-step path
    "DriftMonitor-fit": (lambda: lightning_nas.callbacks.DriftMonitor(_profile(), stages=["fit"]), False),
}


def _profile() -> Any:
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.deploy import ReferenceProfile

    x = DigitsDataModule(batch_size=32, seed=0).split("train").tensors[0][:200]
    return ReferenceProfile.from_data(_teacher(), x, attribution_samples=0)


def count_syncs(make: Callable[[], L.Callback], searchable: bool, root: Path, steps: int = STEPS) -> SyncCounter:
    from torch.utils.data import DataLoader

    from lightning_nas.data import DigitsDataModule

    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup("fit")
    counter = SyncCounter()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
        callbacks=[counter, make(), counter.closer],
    )
    net = _SearchNet() if searchable else DigitsCNN(8)
    train = DataLoader(dm.split("train"), batch_size=32, shuffle=False)
    val = DataLoader(dm.split("val"), batch_size=32)
    trainer.fit(Classifier(net), train, val)
    assert counter.step == steps - 1
    return counter


@pytest.fixture(autouse=True)
def _one_thread():
    """Counting, not timing: one thread keeps these fits quick on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_no_per_step_host_sync(name: str, tmp_path: Path) -> None:
    make, searchable = CALLBACKS[name]
    counter = count_syncs(make, searchable, tmp_path)
    assert not counter.sites, f"{name}: host syncs in training/validation steps after the first:\n{counter.report()}"


def test_counter_sees_a_host_tensor(tmp_path: Path) -> None:
    """The harness itself: lightning_nas code that makes a tensor without a device in each step is caught."""

    class Allocating(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *a: Any) -> None:
            from lightning_nas.explain.agreement import Agreement

            Agreement(num_classes=10)  # its states start on the CPU (torchmetrics moves them with .to(device))

    counter = count_syncs(Allocating, False, tmp_path, steps=3)
    assert {m for _, _, m in counter.sites} == {"torch.zeros without a device", "torch.full without a device"}, (
        counter.report()
    )
    assert {site.split(":")[0] for _, site, _ in counter.sites} == {"lightning_nas/explain/agreement.py"}


def test_counter_sees_a_sync(tmp_path: Path) -> None:
    """The harness itself: a callback that reads its loss with ``.item()`` each step is caught and located."""

    class Syncing(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *a: Any) -> None:
            from lightning_nas.explain.dynamics import weight_norms  # lightning_nas code that syncs per layer

            weight_norms(list(pl_module.named_modules())[-1:])

    counter = count_syncs(Syncing, False, tmp_path, steps=3)
    assert counter.sites, "the counter missed a per-step .item()/float()"
    assert {site.split(":")[0] for _, site, _ in counter.sites} == {"lightning_nas/explain/dynamics.py"}, (
        counter.report()
    )


if __name__ == "__main__":  # python tests/test_host_sync.py: the sites, per callback
    import tempfile

    for n, (mk, s) in CALLBACKS.items():
        try:
            c = count_syncs(mk, s, Path(tempfile.mkdtemp()))
            print(f"{n}: {sum(c.sites.values())} calls\n{c.report()}", flush=True)
        except Exception:
            print(f"{n}: FAILED\n{traceback.format_exc()}", flush=True)
