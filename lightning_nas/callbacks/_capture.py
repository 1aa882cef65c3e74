"""What the user's own steps feed the model, shared by every lightning_nas callback of a fit (``ModelIO``).

For the length of a fit the service wraps the LightningModule's step methods (instance attributes, removed at
teardown; Lightning's ``is_overridden`` sees through them). The first training step and the first evaluation
step (usually the sanity check's) run under a ``CallRecorder``, and the route from the model's input to the
logits is found there (``_route.find_route``): the module the step calls, with the inputs it really received.
Later steps run under a ``RouteTap`` only while a callback listens; each listener gets a ``StepRecord`` (the
route's inputs and output in that step, the raw batch) and a training-step listener may return a replacement
output (distillation adds its term to the user's loss this way). Nothing is run that the user's loop does not
run itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_nas.callbacks._route import (
    CallRecorder,
    Route,
    RouteCall,
    RouteTap,
    batch_size,
    detached,
    find_route,
    first_rows,
    labels_of,
    map_rows,
    per_sample_logits,
    split_input,
)

STEPS = {"training_step": "train", "validation_step": "eval", "test_step": "eval", "predict_step": "eval"}
_ATTR = "_lightning_nas_io"

Listener = Callable[["StepRecord"], Any]


@dataclass
class StepRecord:
    """One step as the model saw it: ``calls`` are the runs of the route (inputs of its first module, output of
    its last), ``batch`` the step's raw batch, ``output`` what the step returned."""

    kind: str
    step: str
    batch: Any
    batch_idx: int | None
    calls: list[RouteCall]
    output: Any
    route: Route | None

    @property
    def loss(self) -> torch.Tensor | None:
        return _loss_of(self.output)


def _loss_of(out: Any) -> torch.Tensor | None:
    loss = out.get("loss") if isinstance(out, dict) else out
    return loss if isinstance(loss, torch.Tensor) else None


class _StepWrapper:
    """The instance attribute that replaces one step method during a fit."""

    def __init__(self, io: ModelIO, name: str, original: Callable) -> None:
        self.io, self.name, self.original = io, name, original
        self.__wrapped__ = original  # Lightning's is_overridden() looks through __wrapped__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.io._run(self.name, self.original, args, kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # a copy of the module made during the fit gets its class's own step, not this fit's wrapper
        new = memo.get(id(self.io.module))
        return getattr(type(self.io.module), self.name).__get__(new) if new is not None else self.original


class ModelIO:
    """Per LightningModule: the route its steps take to the logits, found from real steps, and listeners.

    ``route(kind)`` is ``None`` until a step of that kind (``"train"`` or ``"eval"``) ran; it falls back to the
    other kind's route. ``example(kind)`` holds the first two samples of the route's inputs (CPU).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.routes: dict[str, Route | None] = {}
        self.examples: dict[str, tuple[tuple, dict]] = {}
        self.ran: set[str] = set()  # names of the model parts that ran in the steps the routes were found in
        self._owners: set[int] = set()
        self._wrappers: dict[str, _StepWrapper] = {}
        self._listeners: list[tuple[int, str, Listener, Route | None]] = []
        self._route_listeners: list[tuple[int, Callable[[str, Route | None], None]]] = []
        self._before: list[tuple[int, str, Callable[[], None]]] = []
        self._warned: set[str] = set()
        self._trainer: weakref.ref | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None  # a copied module gets its own service when a callback asks for one

    # ------------------------------------------------------------------ life cycle
    @staticmethod
    def of(module: nn.Module) -> ModelIO:
        io = module.__dict__.get(_ATTR)
        if not isinstance(io, ModelIO) or io.module is not module:
            io = ModelIO(module)
            module.__dict__[_ATTR] = io
        return io

    def attach(self, owner: object, trainer: Any = None) -> ModelIO:
        """Register ``owner`` (a callback) for the fit ``trainer`` runs; the first one installs the step wrappers.

        A fit that ended in an exception skips teardown: an owner attaching again, or another trainer, means the
        old registrations are stale and everything starts afresh."""
        old = self._trainer() if self._trainer is not None else None
        if id(owner) in self._owners or (trainer is not None and old is not None and old is not trainer):
            self._reset()
        if not self._owners:
            self.routes, self.examples, self.ran = {}, {}, set()
            self._install()
            self._trainer = weakref.ref(trainer) if trainer is not None else None
        self._owners.add(id(owner))
        return self

    def detach(self, owner: object) -> None:
        """Unregister ``owner`` and its listeners; the last one removes the step wrappers."""
        self._listeners = [entry for entry in self._listeners if entry[0] != id(owner)]
        self._route_listeners = [entry for entry in self._route_listeners if entry[0] != id(owner)]
        self._before = [entry for entry in self._before if entry[0] != id(owner)]
        self._owners.discard(id(owner))
        if not self._owners:
            self._reset()

    def _reset(self) -> None:
        for name, wrapper in self._wrappers.items():
            if self.module.__dict__.get(name) is wrapper:
                del self.module.__dict__[name]
        self._wrappers, self._owners, self._trainer = {}, set(), None
        self._listeners, self._route_listeners, self._before = [], [], []

    def _install(self) -> None:
        for name in STEPS:
            if name != "predict_step" and not is_overridden(name, self.module):
                continue
            current = getattr(self.module, name)
            if isinstance(current, _StepWrapper):
                current = current.original
            wrapper = _StepWrapper(self, name, current)
            self.module.__dict__[name] = wrapper
            self._wrappers[name] = wrapper

    # ------------------------------------------------------------------ what callbacks use
    def route(self, kind: str = "train") -> Route | None:
        r = self.routes.get(kind)
        return r if r is not None else self.routes.get("eval" if kind == "train" else "train")

    def example(self, kind: str = "train") -> tuple[tuple, dict] | None:
        ex = self.examples.get(kind)
        return ex if ex is not None else self.examples.get("eval" if kind == "train" else "train")

    def listen(self, owner: object, kind: str, fn: Listener, route: Route | None = None) -> None:
        """Call ``fn(record)`` after every step of ``kind`` (``route``: tap this route instead of the found one)
        until ``owner`` detaches. A training-step listener may return a replacement for the step's output."""
        if not any(o == id(owner) and k == kind and f == fn for o, k, f, _ in self._listeners):
            self._listeners.append((id(owner), kind, fn, route))

    def unlisten(self, owner: object, kind: str | None = None) -> None:
        self._listeners = [e for e in self._listeners if not (e[0] == id(owner) and kind in (None, e[1]))]

    def before(self, owner: object, kind: str, fn: Callable[[], None]) -> None:
        """Call ``fn()`` right before every step of ``kind`` runs (after every callback's batch-start hook)."""
        if not any(o == id(owner) and k == kind and f == fn for o, k, f in self._before):
            self._before.append((id(owner), kind, fn))

    def on_route(self, owner: object, fn: Callable[[str, Route | None], None]) -> None:
        """Call ``fn(kind, route)`` when the route of a step kind is found (until ``owner`` detaches)."""
        if not any(o == id(owner) and f == fn for o, f in self._route_listeners):
            self._route_listeners.append((id(owner), fn))

    # ------------------------------------------------------------------ the wrapped step
    def _run(self, name: str, original: Callable, args: tuple, kwargs: dict) -> Any:
        kind = STEPS[name]
        for _, k, fn in list(self._before):
            if k == kind:
                fn()
        listeners = [(fn, r) for _, k, fn, r in self._listeners if k == kind]
        discover = kind not in self.routes
        own = {r for _, r in listeners if r is not None}
        if not discover and not listeners:
            return original(*args, **kwargs)
        found_route = self.route(kind)
        taps = {r: RouteTap(self.module, r) for r in own}
        if not discover and found_route is not None and any(r is None for _, r in listeners):
            taps.setdefault(found_route, RouteTap(self.module, found_route))
        recorder = CallRecorder(self.module) if discover else None
        for t in taps.values():
            t.__enter__()
        try:
            if recorder is not None:
                with recorder:
                    out = original(*args, **kwargs)
            else:
                out = original(*args, **kwargs)
        finally:
            for t in taps.values():
                t.__exit__(None, None, None)
        calls_of: dict[Route | None, list[RouteCall]] = {r: t.calls for r, t in taps.items()}
        if recorder is not None:
            found = find_route(recorder.calls, _loss_of(out) if kind == "train" else None, recorder.inner)
            self.ran |= recorder.ran
            self._found(kind, name, found)
            found_route = self.route(kind)
            if found is not None:
                calls_of.setdefault(found.route, [found.call])
        batch = args[0] if args else kwargs.get("batch")
        idx = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("batch_idx")
        for listener, r in listeners:
            route = r if r is not None else found_route
            record = StepRecord(kind, name, batch, idx, calls_of.get(route, []), out, route)
            new = listener(record)
            if new is not None and kind == "train":
                out = new
        return out

    def _found(self, kind: str, step: str, found: Any) -> None:
        if found is None:
            self.routes[kind] = None
            return
        self.routes[kind] = found.route
        self.examples[kind] = first_rows(found.call.args, found.call.kwargs, 2)
        if found.dropped and kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(
                f"lightning_nas: `{step}` feeds {found.dropped} into `{found.route.describe()}` through "
                "code it cannot replay (only reshape, pooling and activations are recognised); example "
                f"inputs, probes and the int8 model cover `{found.route.describe()}` only"
            )
        with torch.inference_mode(False), torch.enable_grad():  # listeners may trace (pruning) or prepare (QAT)
            for _, fn in list(self._route_listeners):
                fn(kind, found.route)


# ---------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeSet:
    """Fixed samples as the model receives them: the route's inputs (``args``, ``kwargs``), labels and the
    indices picked from the collected pool."""

    args: tuple
    kwargs: dict
    y: torch.Tensor | None
    indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.x, self.rest, self.rebuild = split_input(self.args, self.kwargs)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_tokens(self) -> bool:
        return not torch.is_floating_point(self.x)

    def to_state(self) -> dict[str, Any]:
        return {"args": list(self.args), "kwargs": dict(self.kwargs), "y": self.y, "indices": list(self.indices)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProbeSet:
        return cls(tuple(state["args"]), dict(state["kwargs"]), state["y"], list(state["indices"]))

    def forward_fn(self, route: Route) -> Callable[..., torch.Tensor]:
        """``(module, x, *rest) -> (batch, classes)`` scores through ``route`` (Captum-compatible)."""
        rebuild = self.rebuild

        def fwd(module: nn.Module, x: torch.Tensor, *rest: Any) -> torch.Tensor:
            a, kw = rebuild(x, *rest)
            scores = per_sample_logits(route(module, *a, **kw), x.shape[0])
            if scores is None:
                raise ValueError(
                    f"`{route.describe()}` does not return (batch, classes) scores for a batch of {x.shape[0]}"
                )
            return scores

        return fwd


def _batch_tensors(obj: Any, n: int) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    map_rows(obj, n, keep)
    return found


def cat_rows(parts: list[tuple[tuple, dict, int]]) -> tuple[tuple, dict]:
    """Concatenate several calls' inputs along the batch (values without a batch dimension: the first's)."""
    args, kwargs, n0 = parts[0]
    if len(parts) == 1:
        return args, kwargs
    joined = iter([torch.cat(column) for column in zip(*[_batch_tensors((a, k), n) for a, k, n in parts])])
    return map_rows((args, kwargs), n0, lambda _: next(joined))


class ProbeCollector:
    """A listener that keeps the first evaluation samples the model receives (training samples when no evaluation
    ran) with their labels, then picks a fixed probe round-robin over classes (``explain.select_probe``)."""

    def __init__(
        self,
        n_samples: int,
        seed: int,
        labels: Callable[[Any, int], torch.Tensor | None] = labels_of,
        pool: int | None = None,
    ) -> None:
        self.n_samples, self.seed, self.labels = n_samples, seed, labels
        self.pool = pool or max(4 * n_samples, 128)
        self._parts: dict[str, list[tuple[tuple, dict, int, torch.Tensor | None]]] = {"eval": [], "train": []}
        self._seen: set[tuple[str, Any]] = set()
        self._count = {"eval": 0, "train": 0}

    def __call__(self, record: StepRecord) -> None:
        kind = record.kind
        if self._count[kind] >= self.pool or not record.calls:
            return
        key = (record.step, record.batch_idx)
        if record.batch_idx is not None and key in self._seen:  # the sanity check's batches come again
            return
        self._seen.add(key)
        call = record.calls[0]
        n = call.batch_size
        if not n:
            return
        y = self.labels(record.batch, n)
        take = min(n, self.pool - self._count[kind])
        args, kwargs = map_rows((call.args, call.kwargs), n, lambda t: t[:take])
        # copies stay on the model's device (no host sync in the step); probe() moves the picked rows to the CPU
        y = None if y is None else y[:take].detach().clone()
        self._parts[kind].append((detached(args, None), detached(kwargs, None), take, y))
        self._count[kind] += take

    @property
    def ready(self) -> bool:
        return bool(self._parts["eval"] or self._parts["train"])

    @property
    def full(self) -> bool:
        """The pool of evaluation samples is complete (a sanity check alone may not fill it)."""
        return self._count["eval"] >= self.pool

    def probe(self, partial: bool = False) -> ProbeSet | None:
        from lightning_nas.explain.attribution import select_probe

        parts = self._parts["eval"] or self._parts["train"]
        if not parts:
            return None
        args, kwargs = cat_rows([(a, k, n) for a, k, n, _ in parts])
        total = sum(n for *_, n, _ in parts)
        ys = [y for *_, y in parts]
        y = torch.cat([t.cpu() for t in ys if t is not None]) if all(t is not None for t in ys) else None
        if total < self.n_samples and not partial:
            raise ValueError(f"`n_samples`={self.n_samples} is more than the {total} samples the steps fed the model")
        labels = y if y is not None else torch.zeros(total)  # float: drawn uniformly
        picked = select_probe((torch.arange(total), labels), min(self.n_samples, total), seed=self.seed).indices
        idx = torch.tensor(picked, dtype=torch.long)
        args, kwargs = map_rows((args, kwargs), total, lambda t: t[idx.to(t.device)])
        return ProbeSet(detached(args), detached(kwargs), None if y is None else y[idx], picked)


def call_scores(call: RouteCall) -> torch.Tensor | None:
    """``(batch, classes)`` scores of one recorded run of the route (its output), or ``None``."""
    return per_sample_logits(call.output, batch_size(call.args, call.kwargs))


class EvalBatches:
    """A listener keeping the route's inputs and labels of the first ``max_batches`` validation batches of the
    latest validation run (copies on the model's device: no host sync in the step), for explanations that need
    accuracy on what the model receives."""

    def __init__(self, max_batches: int, labels: Callable[[Any, int], torch.Tensor | None] = labels_of) -> None:
        self.max_batches, self.labels = max_batches, labels
        self.batches: list[tuple[tuple[tuple, dict], torch.Tensor | None]] = []

    def __call__(self, record: StepRecord) -> None:
        if record.step != "validation_step" or not record.calls:
            return
        if record.batch_idx == 0:  # a new validation run
            self.batches = []
        if len(self.batches) >= self.max_batches:
            return
        call = record.calls[0]
        y = self.labels(record.batch, call.batch_size)
        y = None if y is None else y.detach().clone()
        self.batches.append(((detached(call.args, None), detached(call.kwargs, None)), y))

    def labelled(self) -> list[tuple[tuple[tuple, dict], torch.Tensor]]:
        return [(inputs, y) for inputs, y in self.batches if y is not None]
