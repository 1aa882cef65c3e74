"""The route a LightningModule's step takes from the model's input to its logits, found from real forward calls.

Pure torch (no Lightning import). Users transform batches inside ``training_step`` (resize, normalise, pick dict
keys) and call a submodule (``self.model(x)``), or a backbone then a head. A callback that needs an example input,
a probe, the student or the part to quantize must feed the model what the step feeds it, so it records the
module calls of a real step (``CallRecorder``) and keeps the chain that produced the logits (``find_route``):

* ``Route(("",))``: the step calls ``self(x)`` (the LightningModule's own ``forward``);
* ``Route(("model",))``: the step calls ``self.model(x)``;
* ``Route(("backbone", "head"), (("mean", (512,)),))``: ``self.head(self.backbone(x).mean((2, 3)))``.

Between two calls the step may apply simple glue, recognised numerically on the recorded tensors (``GLUES``):
the tensor as is (dropout included), a reshape/flatten, global average or max pooling over the trailing dims,
or an activation. Other glue ends the route at the later call (``FoundRoute.dropped`` names what was left out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_Pool = Callable[..., torch.Tensor]
_AVG: dict[int, _Pool] = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}
_MAX: dict[int, _Pool] = {3: F.adaptive_max_pool1d, 4: F.adaptive_max_pool2d, 5: F.adaptive_max_pool3d}

# name -> function of (the earlier call's output, the glue's size parameter); the result is then reshaped to the
# later call's input shape. Pooling glues carry their output size in the name: ``"avg_pool@2"`` pools to 2x2.
GLUES: dict[str, Callable[[torch.Tensor, int | None], torch.Tensor]] = {
    "same": lambda t, k: t,
    "mean": lambda t, k: t.flatten(2).mean(2),
    "amax": lambda t, k: t.flatten(2).amax(2),
    "avg_pool": lambda t, k: _AVG[t.ndim](t, k),
    "max_pool": lambda t, k: _MAX[t.ndim](t, k),
    "relu": lambda t, k: F.relu(t),
    "gelu": lambda t, k: F.gelu(t),
    "silu": lambda t, k: F.silu(t),
    "tanh": lambda t, k: torch.tanh(t),
    "sigmoid": lambda t, k: torch.sigmoid(t),
    "softmax": lambda t, k: torch.softmax(t, -1),
    "log_softmax": lambda t, k: torch.log_softmax(t, -1),
}


def _glue_fn(name: str) -> tuple[Callable[[torch.Tensor, int | None], torch.Tensor], int | None]:
    base, _, size = name.partition("@")
    if base not in GLUES or (size and not size.isdigit()):
        raise ValueError(f"unknown glue {name!r}; allowed: {sorted(GLUES)} (pooling as 'avg_pool@<size>')")
    return GLUES[base], int(size) if size else None


def _pool_sizes(t: torch.Tensor, per_sample: int) -> list[int]:
    """Adaptive pooling output sizes of ``t`` (B, C, *spatial) that give ``per_sample`` values."""
    if t.ndim not in _AVG or per_sample % t.shape[1]:
        return []
    cells, dims = per_sample // t.shape[1], t.ndim - 2
    side = round(cells ** (1 / dims))
    return [side] if side**dims == cells and all(side <= d for d in t.shape[2:]) else []


def logits_of(out: Any) -> torch.Tensor | None:
    """The logits inside a forward output: the tensor, a tuple's first item, ``out["logits"]`` or ``out.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def per_sample_logits(out: Any, batch: int) -> torch.Tensor | None:
    """``(batch, classes)`` scores from a forward output, or ``None``.

    Sequence outputs are reduced to their last position: ``(batch, T, C)`` and the flattened ``(batch * T, C)``
    a language model returns both give ``(batch, C)`` (the next-token scores).
    """
    t = logits_of(out)
    if t is None or not torch.is_floating_point(t) or t.ndim < 2:
        return None
    if t.ndim == 2 and t.shape[0] == batch:
        return t
    if t.ndim == 3 and t.shape[0] == batch:
        return t[:, -1]
    if t.ndim == 2 and batch > 0 and t.shape[0] % batch == 0:
        return t.reshape(batch, -1, t.shape[1])[:, -1]
    return None


Link = tuple[str, tuple[int, ...]]  # (glue name, per-sample shape of what the next part receives)


def _glued(link: Link, out: Any) -> torch.Tensor:
    """Apply a link: its glue, then the reshape to the next part's per-sample shape (its first dimension left free,
    so the route still runs after pruning removes channels)."""
    t = logits_of(out)
    assert t is not None  # the parts of a route return tensors (find_route picked them so)
    fn, size = _glue_fn(link[0])
    y = fn(t, size)
    shape = link[1]
    return y.reshape(t.shape[0], -1, *shape[1:]) if shape else y.reshape(t.shape[0])


@dataclass(frozen=True)
class Route:
    """The module calls from the model's input to the logits (paths inside the LightningModule, ``""`` itself),
    with the glue between consecutive calls (``links``) and, optionally, applied to the input first (``entry``,
    e.g. the LightningModule's ``forward`` flattening ``x`` before its first layer) and to the last output
    (``exit``, e.g. a final activation). ``whole`` names a module whose own ``forward`` runs exactly these parts
    (the LightningModule, ``""``, when its forward was resolved into the parts it calls): calling the route runs
    that forward, the user's own code, and the parts and glue serve to build a standalone model (``Chain``)."""

    paths: tuple[str, ...]
    links: tuple[Link, ...] = ()
    entry: Link | None = None
    exit: Link | None = None
    whole: str | None = None

    def __post_init__(self) -> None:
        if not self.paths or len(self.links) != len(self.paths) - 1:
            raise ValueError(f"a route needs one link between consecutive calls, got {self.paths} / {self.links}")
        for glue, _ in (*self.links, *(g for g in (self.entry, self.exit) if g)):
            _glue_fn(glue)

    def modules(self, root: nn.Module) -> list[nn.Module]:
        return [root.get_submodule(p) if p else root for p in self.paths]

    def __call__(self, root: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.whole is not None:
            return (root.get_submodule(self.whole) if self.whole else root)(*args, **kwargs)
        return _run_parts(self.modules(root), self.links, self.entry, self.exit, args, kwargs)

    def run(self, root: nn.Module, example: tuple[tuple, dict]) -> Any:
        """Run the route on an ``(args, kwargs)`` example (the ``forward_fn`` form ``compress.prune`` takes)."""
        return self(root, *example[0], **example[1])

    def logits(self, root: nn.Module, example: tuple[tuple, dict]) -> torch.Tensor:
        """``(batch, classes)`` scores of an ``(args, kwargs)`` example (``ValueError`` when there are none)."""
        n = batch_size(*example)
        scores = per_sample_logits(self.run(root, example), n)
        if scores is None:
            raise ValueError(f"`{self.describe()}` does not return (batch, classes) scores for a batch of {n}")
        return scores

    def describe(self) -> str:
        """E.g. ``self.backbone -> mean -> self.head`` (``self`` alone: the LightningModule's forward)."""
        parts = [self.entry[0]] if self.entry and self.entry[0] != "same" else []
        parts += [f"self.{self.paths[0]}" if self.paths[0] else "self"]
        for (glue, _), p in zip(self.links, self.paths[1:]):
            parts += ([] if glue == "same" else [glue]) + [f"self.{p}" if p else "self"]
        parts += [self.exit[0]] if self.exit and self.exit[0] != "same" else []
        return " -> ".join(parts)

    def to_state(self) -> dict[str, Any]:
        """Plain lists and strings (checkpoint state that loads with ``weights_only=True``)."""
        return {
            "paths": list(self.paths),
            "links": [[g, list(s)] for g, s in self.links],
            "entry": None if self.entry is None else [self.entry[0], list(self.entry[1])],
            "exit": None if self.exit is None else [self.exit[0], list(self.exit[1])],
            "whole": self.whole,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Route:
        entry, out = state.get("entry"), state.get("exit")
        return cls(
            tuple(state["paths"]),
            tuple((g, tuple(s)) for g, s in state["links"]),
            None if entry is None else (entry[0], tuple(entry[1])),
            None if out is None else (out[0], tuple(out[1])),
            state.get("whole"),
        )


ROOT = Route(("",))


def _run_parts(
    parts: list[nn.Module], links: tuple[Link, ...], entry: Link | None, exit: Link | None, args: tuple, kwargs: dict
) -> Any:
    if entry is not None:
        args = (_glued(entry, args[0]), *args[1:])
    out = parts[0](*args, **kwargs)
    for link, part in zip(links, parts[1:]):
        out = part(_glued(link, out))
    return out if exit is None else _glued(exit, out)


class Chain(nn.Module):
    """Modules run one after the other with a route's glue: a standalone model made of the parts a step calls
    (e.g. an int8 backbone and an int8 head). ``Chain([m])`` is ``m``'s forward."""

    def __init__(
        self, parts: list[nn.Module], links: tuple[Link, ...] = (), entry: Link | None = None, exit: Link | None = None
    ) -> None:
        super().__init__()
        if len(links) != len(parts) - 1:
            raise ValueError(f"{len(parts)} parts need {len(parts) - 1} links, got {len(links)}")
        self.parts = nn.ModuleList(parts)
        self.links = tuple((g, tuple(s)) for g, s in links)
        self.entry = None if entry is None else (entry[0], tuple(entry[1]))
        self.exit = None if exit is None else (exit[0], tuple(exit[1]))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _run_parts(list(self.parts), self.links, self.entry, self.exit, args, kwargs)

    @classmethod
    def of(cls, parts: list[nn.Module], route: Route) -> nn.Module:
        """The parts of ``route`` as one model (a single part with no glue is returned as it is)."""
        if len(parts) == 1 and route.entry is None and route.exit is None:
            return parts[0]
        return cls(parts, route.links, route.entry, route.exit)


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Call:
    """One module call: its path, the inputs it received, what it returned, and the call it ran inside (for the
    calls made by the LightningModule's own ``forward``)."""

    path: str
    module: nn.Module
    args: tuple
    kwargs: dict
    output: Any = None
    parent: Call | None = None


def _is_model_part(module: nn.Module) -> bool:
    """Modules that can be (part of) the model: they hold parameters and are not a loss or a metric."""
    if isinstance(module, nn.modules.loss._Loss):
        return False
    if any(cls.__module__.startswith("torchmetrics") for cls in type(module).__mro__):
        return False
    return next(module.parameters(), None) is not None


class CallRecorder:
    """Record the outermost calls of the model parts under ``root`` while the block runs (``self.model(x)``, not
    the layers inside it), and the calls the root's own forward makes one level down.

    The inputs and outputs are references (the recorder copies nothing); ``ran`` names every part that ran.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.calls: list[Call] = []  # outermost calls
        self.inner: list[Call] = []  # calls made directly inside an outermost call of the root itself
        self.ran: set[str] = set()
        self._stack: list[Call | None] = []
        self._handles: list[Any] = []

    def __enter__(self) -> CallRecorder:
        seen: set[int] = set()
        for name, mod in self.root.named_modules():
            if id(mod) in seen or not _is_model_part(mod):
                continue
            seen.add(id(mod))
            self._handles.append(mod.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post, always_call=True))
        return self

    def _pre(self, name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            self.ran.add(name)
            call = None
            if not self._stack:
                call = Call(name, mod, args, dict(kwargs))
                self.calls.append(call)
            elif len(self._stack) == 1 and self._stack[0] is not None and self._stack[0].module is self.root:
                call = Call(name, mod, args, dict(kwargs), parent=self._stack[0])
                self.inner.append(call)
            self._stack.append(call)

        return hook

    def _post(self, mod: nn.Module, args: tuple, out: Any) -> None:
        call = self._stack.pop() if self._stack else None
        if call is not None:
            call.output = out

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._stack = [], []


@dataclass
class RouteCall:
    """One run of a route inside a step: the inputs of its first module and the output of its last."""

    args: tuple
    kwargs: dict
    output: Any = None

    @property
    def batch_size(self) -> int:
        return batch_size(self.args, self.kwargs)


class RouteTap:
    """Record every run of ``route`` under ``root`` while the block runs (two hooks, nothing copied)."""

    def __init__(self, root: nn.Module, route: Route) -> None:
        self.root, self.route = root, route
        self.calls: list[RouteCall] = []
        self._pending: list[RouteCall] = []
        self._handles: list[Any] = []

    def __enter__(self) -> RouteTap:
        mods = self.route.modules(self.root)
        self._handles = [
            mods[0].register_forward_pre_hook(self._pre, with_kwargs=True),
            mods[-1].register_forward_hook(self._post),
        ]
        return self

    def _pre(self, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending.append(RouteCall(args, dict(kwargs)))

    def _post(self, mod: nn.Module, args: tuple, out: Any) -> None:
        if self._pending:
            call = self._pending.pop(0)
            call.output = out
            self.calls.append(call)

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._pending = [], []


# ---------------------------------------------------------------------------------------------- finding
@dataclass
class FoundRoute:
    """A route and its first run in the recorded step; ``dropped`` names model calls before it that fed it
    through glue the route cannot replay (their part of the model is not covered)."""

    route: Route
    call: RouteCall
    dropped: list[str] = field(default_factory=list)


def _ancestors(loss: torch.Tensor, limit: int = 500_000) -> set[Any]:
    seen: set[Any] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack and len(seen) < limit:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return seen


def _single_input(call: Call) -> torch.Tensor | None:
    tensors = [a for a in call.args if isinstance(a, torch.Tensor)]
    if len(call.args) != 1 or len(tensors) != 1 or any(isinstance(v, torch.Tensor) for v in call.kwargs.values()):
        return None
    return tensors[0]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)


def _dropout_of(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``b`` is ``a`` with some entries zeroed and the rest scaled by one constant (dropout in training)."""
    if a.shape != b.shape or not torch.is_floating_point(a):
        return False
    keep = b != 0
    if not keep.any() or not ((~keep) & (a != 0)).any():  # dropout zeroes some entries and scales the rest
        return False
    ratio = b[keep].float() / a[keep].float()
    scale = float(ratio[0])
    return scale > 1.0 + 1e-6 and bool(torch.isfinite(ratio).all()) and _close(ratio, torch.full_like(ratio, scale))


def match_glue(out: Any, inp: torch.Tensor) -> tuple[str, tuple[int, ...]] | None:
    """The glue that turns ``out`` (an earlier call's output) into ``inp`` (a later call's input), if any."""
    t = logits_of(out)
    if t is None or not t.ndim or not inp.ndim or t.shape[0] != inp.shape[0]:
        return None
    shape = tuple(inp.shape[1:])
    if t is inp:
        return ("same", shape)
    per_sample = inp.numel() // max(1, inp.shape[0])
    for name, fn in GLUES.items():
        if name in ("mean", "amax", "avg_pool", "max_pool") and t.ndim < 3:
            continue
        for size in _pool_sizes(t, per_sample) if name in ("avg_pool", "max_pool") else [None]:
            with torch.no_grad():
                y = fn(t.detach(), size)
            if y.numel() == inp.numel() and _close(y.reshape(inp.shape), inp.detach()):
                return (name if size is None else f"{name}@{size}", shape)
    if t.numel() == inp.numel() and _dropout_of(t.detach().reshape(inp.shape), inp.detach()):
        return ("same", shape)
    return None


def _chain_back(calls: list[Call], last: int) -> tuple[int, list[Link]]:
    """Extend a route ending at ``calls[last]`` backwards while the previous call's output, through
    ``match_glue``, is the next call's only input; returns the first index and the links."""
    first, links = last, list[Link]()
    while first > 0:
        inp = _single_input(calls[first])
        link = None if inp is None else match_glue(calls[first - 1].output, inp)
        if link is None:
            break
        links.insert(0, link)
        first -= 1
    return first, links


def _refine(root_call: Call, inner: list[Call]) -> tuple[Route, RouteCall] | None:
    """The route inside the LightningModule's own ``forward``: the chain of the parts it calls that starts from
    its input (as is, or through glue) and ends in its output. ``None`` when its code does more than that."""
    out = logits_of(root_call.output)
    kids = [c for c in inner if c.parent is root_call]
    exit = None
    ends = [
        i
        for i, c in enumerate(kids)
        if (t := logits_of(c.output)) is not None and out is not None and (t is out or _close(t, out))
    ]
    if not ends and kids and out is not None:  # a last activation (or softmax) after the last part
        exit = match_glue(kids[-1].output, out)
        ends = [len(kids) - 1] if exit is not None else []
    if not ends:
        return None
    first, links = _chain_back(kids, ends[-1])
    start = kids[first]
    if (
        len(start.args) == len(root_call.args)
        and all(a is b for a, b in zip(start.args, root_call.args))
        and start.kwargs.keys() == root_call.kwargs.keys()
        and all(start.kwargs[k] is root_call.kwargs[k] for k in start.kwargs)
    ):
        entry = None
    else:
        x, inp = _single_input(root_call), _single_input(start)
        entry = None if x is None or inp is None else match_glue(x, inp)
        if entry is None or x is None or inp is None:
            return None
        entry = None if entry[0] == "same" and tuple(x.shape) == tuple(inp.shape) else entry
    route = Route(tuple(c.path for c in kids[first : ends[-1] + 1]), tuple(links), entry, exit, whole=root_call.path)
    return route, RouteCall(root_call.args, root_call.kwargs, root_call.output)


def find_route(
    calls: list[Call], loss: torch.Tensor | None = None, inner: list[Call] | None = None
) -> FoundRoute | None:
    """The route to the logits among the recorded ``calls`` of one step.

    The route ends at the last call returning a floating tensor with a batch dimension; when the step's
    ``loss`` carries an autograd graph, at the last such call the loss was computed from. It extends backwards
    while the previous call's output, through ``match_glue``, is the next call's only input. A route that is the
    LightningModule's own ``forward`` is replaced by the parts that forward calls (``inner``) when they account
    for all of it, so the model is named by its own modules (``self.net``, not the LightningModule).
    """
    ends = [
        i
        for i, c in enumerate(calls)
        if (t := logits_of(c.output)) is not None and torch.is_floating_point(t) and t.ndim >= 1
    ]
    if not ends:
        return None
    if isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
        anc = _ancestors(loss)
        used = [i for i in ends if (t := logits_of(calls[i].output)) is not None and t.grad_fn in anc]
        ends = used or ends
    last = ends[-1]
    first, links = _chain_back(calls, last)
    dropped = []
    if first > 0:  # a model call right before the route fed it something the route cannot replay
        inp = _single_input(calls[first])
        prev = logits_of(calls[first - 1].output)
        if inp is not None and prev is not None and prev.ndim and inp.ndim and prev.shape[0] == inp.shape[0]:
            dropped = [calls[first - 1].path or "self"]
    route = Route(tuple(calls[i].path for i in range(first, last + 1)), tuple(links))
    call = RouteCall(calls[first].args, calls[first].kwargs, calls[last].output)
    if route.paths == ("",) and inner:
        refined = _refine(calls[last], inner)
        if refined is not None:
            route, call = refined
    return FoundRoute(route, call, dropped)


# ---------------------------------------------------------------------------------------------- batches and rows
def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from tensors_in(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)


def batch_size(args: Any, kwargs: Any = None) -> int:
    """The leading dimension of the first tensor among the inputs (0 when there is none)."""
    for t in tensors_in((args, kwargs or {})):
        if t.ndim:
            return int(t.shape[0])
    return 0


def map_rows(obj: Any, n: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor whose leading dimension is ``n`` (the batch); other values stay."""
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.ndim and obj.shape[0] == n else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_rows(v, n, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_rows(v, n, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: map_rows(v, n, fn) for k, v in obj.items()}
    return obj


def detached(obj: Any, device: torch.device | str | None = "cpu") -> Any:
    """A detached copy of every tensor in ``obj`` (moved to ``device``; ``None`` keeps it), usable by autograd
    even when taken inside an evaluation loop's ``inference_mode``."""
    if isinstance(obj, torch.Tensor):
        with torch.inference_mode(False):
            t = obj.detach()
            return (t.to(device) if device is not None else t).clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(detached(v, device) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(detached(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: detached(v, device) for k, v in obj.items()}
    return obj


def first_rows(args: tuple, kwargs: dict, rows: int) -> tuple[tuple, dict]:
    """The first ``rows`` samples of a call's inputs (detached CPU copies)."""
    n = batch_size(args, kwargs)
    cut = (args, kwargs) if not n else map_rows((args, kwargs), n, lambda t: t[:rows])
    return detached(cut[0]), detached(cut[1])


def labels_of(batch: Any, n: int) -> torch.Tensor | None:
    """The class labels of a batch of ``n`` samples: the second item of a tuple/list batch, or a dict batch's
    ``label(s)``/``y``/``target(s)`` entry, when it is a 1-D integer tensor of length ``n``."""
    y = None
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        y = batch[1]
    elif isinstance(batch, dict):
        y = next(
            (
                batch[k]
                for k in ("label", "labels", "y", "target", "targets", "class", "cls")
                if isinstance(batch.get(k), torch.Tensor)
            ),
            None,
        )
    if y is None or y.ndim != 1 or torch.is_floating_point(y) or y.shape[0] != n:
        return None
    return y


def split_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, Callable[..., tuple[tuple, dict]]]:
    """Split a call's inputs into the input to explain (the first tensor argument), the other inputs as one
    positional tuple (for Captum's ``additional_forward_args``) and ``rebuild(x, *rest) -> (args, kwargs)``."""
    pos = next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor)), None)
    key = None if pos is not None else next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
    if pos is None and key is None:
        raise ValueError("the model's inputs hold no tensor to explain")
    x = args[pos] if pos is not None else kwargs[key]
    others = tuple(a for i, a in enumerate(args) if i != pos)
    keys = [k for k in kwargs if k != key]
    rest = (*others, *(kwargs[k] for k in keys))

    def rebuild(new_x: torch.Tensor, *new_rest: Any) -> tuple[tuple, dict]:
        a, kw = list(new_rest[: len(others)]), dict(zip(keys, new_rest[len(others) :]))
        if pos is not None:
            a.insert(pos, new_x)
        else:
            kw[key] = new_x
        return tuple(a), kw

    return x, rest, rebuild
