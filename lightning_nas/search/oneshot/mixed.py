"""Mixed ops: what a choice becomes inside a one-shot supernet.

A mixed op keeps the choice's candidate modules under the *same* state-dict keys as the choice it replaces
(``candidates.<name>`` for ours, ``<name>`` for NNI's), so checkpoints of the supernet and of the plain model
with choices are interchangeable; the architecture parameters live in the ``Supernet`` controller, never in
the module. ``forward`` asks the controller which candidates to run with which weights:

* DARTS: ``y = sum_i softmax(alpha)_i * op_i(x)``;
* GDAS: ``y = h_k * op_k(x)`` with ``k = argmax(softmax((alpha + g) / tau))``, Gumbel noise ``g`` and
  ``h_k = 1`` in value but carrying the gradient of the soft sample (straight-through);
* SPOS / a fixed architecture: ``y = op_k(x)`` for the sampled or fixed ``k``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_nas._modules import eval_mode
from lightning_nas.space import ChoiceModule, ChoiceView, SelectInputs
from lightning_nas.space._choices import input_combinations, reduce_inputs


def _shape(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return tuple(_shape(o) for o in out)
    return type(out).__name__


class Mixed(ChoiceModule):
    def __init__(self, view: ChoiceView, controller: Any) -> None:
        super().__init__()
        self.label = view.label
        self._names = list(view.names)
        self._original = [view.module]  # a list: not registered as a child, so no duplicate parameters
        self._ctl = controller
        self._checked = False
        self.aux_skip_ok = False  # input and output shapes agree (DARTS- auxiliary skip applies)
        self._identity: int | None = None  # index of an nn.Identity candidate (the aux skip folds into it)

    def candidate_names(self) -> list[str]:
        return list(self._names)

    def _run(self, i: int, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_shapes(self, *args: Any, **kwargs: Any) -> None:
        """Run every candidate once (no grad, eval mode) and require one output shape."""
        with eval_mode(self), torch.no_grad():
            shapes = [_shape(self._run(i, *args, **kwargs)) for i in range(len(self._names))]
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{n} -> {s}" for n, s in zip(self._names, shapes))
            raise ValueError(
                f"choice {self.label!r}: candidates produce different output shapes ({detail}); "
                "every candidate of a choice must produce the same shape"
            )
        x = args[0] if args else None
        self.aux_skip_ok = isinstance(x, torch.Tensor) and shapes[0] == tuple(x.shape)
        self._checked = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._checked:
            self._check_shapes(*args, **kwargs)
        idx, w = self._ctl.weights(self.label)
        beta = self._ctl.aux_beta if self.aux_skip_ok and self.training else 0.0
        if w is None:
            out = self._run(idx[0], *args, **kwargs)
            return out + beta * args[0] if beta > 0 else out
        ws = list(w.unbind())
        if beta > 0 and self._identity in idx:  # DARTS-: fold the auxiliary skip into the skip's weight
            j = idx.index(self._identity)
            ws[j], beta = ws[j] + beta, 0.0
        out = None  # weighted sum with one fused op per further candidate (cheaper than sum(w_i * y_i))
        for i, wi in zip(idx, ws):
            y = self._run(i, *args, **kwargs)
            out = y * wi if out is None else torch.addcmul(out, y, wi)
        return out + beta * args[0] if beta > 0 else out


class MixedLayer(Mixed):
    """The supernet form of a ``LayerChoice`` (ours or NNI's)."""

    kind = "layer"

    def __init__(self, view: ChoiceView, controller: Any) -> None:
        super().__init__(view, controller)
        candidates = getattr(view.module, "candidates", None)
        if isinstance(candidates, nn.ModuleDict):
            self.candidates = candidates  # the same objects: trained weights are shared
            self._ops: list[nn.Module] = [self.candidates[n] for n in self._names]
        else:  # NNI: candidates are children named str(name)
            self._ops = [view.frozen(n) for n in self._names]
            for n, m in zip(self._names, self._ops):
                self.add_module(n, m)
        self._identity = next((i for i, op in enumerate(self._ops) if type(op) is nn.Identity), None)

    def _run(self, i: int, *args: Any, **kwargs: Any) -> Any:
        return self._ops[i](*args, **kwargs)

    def frozen(self, name: str) -> nn.Module:
        return self._ops[self._names.index(name)]


class MixedInput(Mixed):
    """The supernet form of an ``InputChoice``: a weighted sum over candidate input subsets."""

    kind = "input"

    def __init__(self, view: ChoiceView, controller: Any) -> None:
        super().__init__(view, controller)
        m: Any = view.module  # an InputChoice, ours or NNI's
        self._combos = input_combinations(m.n_candidates, m.n_chosen)
        self.reduction = str(m.reduction)

    def _run(self, i: int, inputs: list[torch.Tensor]) -> Any:
        return reduce_inputs([inputs[j] for j in self._combos[i]], self.reduction)

    def frozen(self, name: str) -> nn.Module:
        return SelectInputs(self._combos[self._names.index(name)], self.reduction)
