"""The base every lightning_nas callback builds on: one look, one set of rules.

A subclass validates its arguments in ``__init__`` (``lightning_nas._validate``), the model in
``setup()`` (``_validate_model``, called once per fit before the first step), lists the attributes that
make up its resumable state in ``_state_attrs``, and logs through ``self.tracker(trainer)``: rich media on
rank zero only, scalars everywhere a logger listens.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import lightning as L
from typing_extensions import override

from lightning_nas.callbacks._capture import ModelIO
from lightning_nas.tracking import Tracker


class LightningNASCallback(L.Callback):
    """Base class: tracker access, model validation at set-up, and ``state_dict`` discipline.

    Subclasses set ``_state_attrs`` to the names of attributes saved in checkpoints; ``state_dict`` deep-copies
    them and ``load_state_dict`` restores them (override both for anything that needs translation, e.g.
    tensors that must move to a device). ``_validate_model(trainer, pl_module)`` runs in ``setup`` for
    ``fit``; raise ``ValueError`` there with the layer, value and what is allowed.

    Examples:
        A callback of your own: its ``_state_attrs`` go into checkpoints and come back on resume.

        >>> from lightning_nas.callbacks import LightningNASCallback
        >>> class CountSteps(LightningNASCallback):
        ...     _state_attrs = ("steps",)
        ...
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.steps = 0
        ...
        ...     def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ...         self.steps += 1
        ...         self.tracker(trainer).log_scalars({"count/steps": self.steps})
        >>> saved = CountSteps()
        >>> saved.steps = 7
        >>> resumed = CountSteps()
        >>> resumed.load_state_dict(saved.state_dict())
        >>> resumed.steps
        7
    """

    _state_attrs: tuple[str, ...] = ()
    _init_args: dict[str, Any]
    _key_args: dict[str, Any]
    _in_init: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Record the arguments each instance was built with (``_init_args``): they make its ``state_key``."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: LightningNASCallback, *args: Any, **kw: Any) -> None:
            outer = not getattr(self, "_in_init", False)  # a subclass's __init__ calling super().__init__
            self._in_init = True
            try:
                init(self, *args, **kw)
            finally:
                if outer:
                    self._in_init = False
            if outer:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                self._init_args = dict(list(bound.arguments.items())[1:])
                self._key_args = {
                    k: v
                    for k, v in self._init_args.items()
                    if _plain(v) and not (k in sig.parameters and _same(v, sig.parameters[k].default))
                }

        # replaces the subclass's own __init__ with the recording wrapper (same signature through functools.wraps)
        cls.__init__ = __init__  # type: ignore[method-assign,assignment]

    @property
    @override
    def state_key(self) -> str:
        """The class name and the plain arguments (numbers, strings, their lists and dicts) that differ from the
        defaults, as Lightning's own callbacks build theirs: ``AttributionMonitor{'every_n_epochs': 2}``. Two
        instances with different arguments keep separate states in a checkpoint."""
        return self._generate_state_key(**getattr(self, "_key_args", {}))

    @property
    @override
    def _legacy_state_key(self) -> Any:
        # checkpoints written before keys held the arguments stored every state under the bare class name
        return self._generate_state_key()

    def _checkpoint_state(self, checkpoint: dict[str, Any]) -> Any:
        """This callback's entry in a Lightning checkpoint's ``callbacks``, or ``None``."""
        states = checkpoint.get("callbacks", {})
        return states.get(self.state_key, states.get(self._legacy_state_key))

    def model_io(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ModelIO:
        """The fit's shared view of what the user's steps feed the model (attached until teardown)."""
        return ModelIO.of(pl_module).attach(self, trainer)

    def release_model_io(self, pl_module: L.LightningModule) -> None:
        ModelIO.of(pl_module).detach(self)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release_model_io(pl_module)  # Lightning skips teardown after an exception

    def tracker(self, trainer: L.Trainer) -> Tracker:
        """The trainer's tracking sink (W&B media, logger scalars, files; no-op off rank zero)."""
        return Tracker.from_trainer(trainer)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._validate_model(trainer, pl_module)

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the model before the first step; subclasses raise ``ValueError`` with a clear message."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self._state_attrs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [n for n in self._state_attrs if n not in state_dict]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: checkpoint state lacks {missing}; was it saved by another "
                "version of this callback?"
            )
        for name in self._state_attrs:
            setattr(self, name, state_dict[name])

    @staticmethod
    def _broadcast(trainer: L.Trainer, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (identity without a distributed strategy)."""
        return trainer.strategy.broadcast(obj, src=src)


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _plain(v: Any) -> bool:
    """Numbers, strings, bools, None, and lists/tuples/dicts of them: what identifies an instance in its key."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False
