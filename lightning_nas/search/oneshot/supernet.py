"""The one-shot supernet: mixed ops installed in a model plus the architecture state that drives them.

``Supernet(model, mode)`` replaces every ``LayerChoice``/``InputChoice`` (ours or NNI's) *in place* by a mixed
op and holds, per decision label (tied choices share one), the architecture logits ``alpha`` (DARTS, GDAS),
their Adam optimizer, the Gumbel temperature, the current sampled path and a private ``torch.Generator``
(so every DDP rank draws the same paths). ``arch_step(loss_fn)`` is one architecture update; ``restore()``
puts the original choice modules back (same candidate objects, the exported candidate active).

Anti-collapse remedies (DARTS' collapse onto parameter-free skips):

* ``"darts-"`` (Chu et al., 2021, DARTS-): an auxiliary skip ``beta * x`` is added to every mixed op whose
  input and output shapes agree, with ``beta`` decaying linearly 1 -> 0 over training. The skip candidate
  then no longer owns the residual gradient path, so it must win on merit.
* ``"beta-decay"`` (Ye et al., 2022, beta-DARTS): the arch loss gains
  ``lambda * mean_k logsumexp(alpha_k)``, which keeps ``alpha`` small and its softmax from saturating early;
  ``lambda`` grows linearly from 0 to ``beta_decay_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_nas._validate import check_choice, check_range
from lightning_nas.search.oneshot.mixed import Mixed, MixedInput, MixedLayer
from lightning_nas.space import decisions, named_choices

MODES = ("darts", "gdas", "spos")
SAMPLINGS = ("fair", "uniform")
REMEDIES = ("none", "darts-", "beta-decay")


def gdas_temperature(tau_max: float, tau_min: float, progress: float) -> float:
    """GDAS' Gumbel-softmax temperature, annealed linearly over training (Dong & Yang 2019):
    ``tau(p) = (1 - p) * tau_max + p * tau_min`` for training progress ``p`` in ``[0, 1]``.

    Examples:
        >>> from lightning_nas.search.oneshot import gdas_temperature
        >>> gdas_temperature(10.0, 0.1, 0.0), gdas_temperature(10.0, 0.1, 1.0)
        (10.0, 0.1)
    """
    return (1.0 - progress) * tau_max + progress * tau_min


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


class Supernet:
    """Architecture state and mixed ops for a one-shot search on ``model`` (modified in place).

    Examples:
        What ``DifferentiableNAS`` drives inside a fit, by hand:

        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> from lightning_nas.search.oneshot import Supernet
        >>> net = nn.Sequential(nn.Linear(4, 4),
        ...                     space.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act"),
        ...                     nn.Linear(4, 2))
        >>> supernet = Supernet(net, "darts")  # the choice becomes a mixed op; alpha lives in the supernet
        >>> type(net[1]).__name__
        'MixedLayer'
        >>> {label: p.tolist() for label, p in supernet.probabilities().items()}  # softmax(alpha), undecided
        {'act': [0.5, 0.5]}
        >>> net(torch.rand(3, 4)).shape  # sum_i softmax(alpha)_i * op_i(x)
        torch.Size([3, 2])
        >>> supernet.export()  # doctest: +ELLIPSIS
        {'act': '...'}
        >>> supernet.restore()  # the original choice modules back in place
        >>> type(net[1]).__name__
        'LayerChoice'
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "darts",
        *,
        arch_lr: float = 3e-3,
        arch_weight_decay: float = 1e-3,
        tau: float = 10.0,
        remedy: str = "none",
        beta_decay_weight: float = 1.0,
        seed: int = 0,
        device: torch.device | str | None = None,
        sampling: str = "fair",
    ) -> None:
        self.mode = check_choice("mode", mode, MODES)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.remedy = check_choice("remedy", remedy, REMEDIES)
        check_range("arch_lr", arch_lr, 0.0, 1.0, low_inclusive=False)
        check_range("tau", tau, 0.0, None, low_inclusive=False)
        decs = {lb: d for lb, d in decisions(model).items() if d.kind in ("layer", "input")}
        if not decs:
            raise ValueError(
                f"the model ({type(model).__name__}) has no LayerChoice/InputChoice to search; "
                "add lightning_nas.space.LayerChoice (or NNI's) to it"
            )
        if any(isinstance(v.module, Mixed) for _, v in named_choices(model)):
            raise ValueError("this model already holds a one-shot supernet (two NAS callbacks on one model?)")
        self.labels = list(decs)
        self.names = {lb: list(d.candidates) for lb, d in decs.items()}
        if device is None:  # the model's device; a trainer passes the device the model is about to move to
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.alpha = {lb: torch.zeros(len(self.names[lb]), device=device, requires_grad=True) for lb in self.labels}
        self.optimizer = (
            torch.optim.Adam(list(self.alpha.values()), lr=arch_lr, betas=(0.5, 0.999), weight_decay=arch_weight_decay)
            if mode != "spos"
            else None
        )
        self.tau = float(tau)
        self.beta_decay_weight = float(beta_decay_weight)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.path = {lb: 0 for lb in self.labels}
        self._queue: dict[str, list[int]] = {lb: [] for lb in self.labels}  # SPOS fair sampling
        self._gumbel = {lb: torch.zeros(len(self.names[lb])) for lb in self.labels}
        self._picks: dict[str, int] | None = None  # GDAS: the paths of the current draw (see _gdas_picks)
        self.fixed: dict[str, int] | None = None  # evaluate one architecture of the supernet
        self.removed: dict[str, int] = {}  # op ablation: a candidate taken out of a decision
        self.arch_grad = False  # alpha receives gradient only inside arch_step
        self.aux_beta = 0.0
        self.progress = 0.0  # fraction of training done (drives the remedies' schedules)
        self._installed: list[tuple[str, nn.Module, Mixed]] = []
        for path, view in reversed(named_choices(model)):  # deepest first: inner paths stay valid
            mixed = MixedLayer(view, self) if view.kind == "layer" else MixedInput(view, self)
            if path:
                parent, attr = _parent(model, path)
                setattr(parent, attr, mixed)
                self._installed.append((path, view.module, mixed))
            else:
                raise ValueError("the model itself is a choice; wrap it in a module")
        self._model = model

    # ------------------------------------------------------------------ forward-time decisions
    def weights(self, label: str) -> tuple[list[int], torch.Tensor | None]:
        """Candidate indices to run for ``label`` and their weights (``None`` = one path, weight 1)."""
        n = len(self.names[label])
        if self.fixed is not None:
            return [self.fixed[label]], None
        keep = [i for i in range(n) if self.removed.get(label) != i]
        if self.mode == "spos":
            return [self.path[label]], None
        a = self.alpha[label] if self.arch_grad else self.alpha[label].detach()
        if self.mode == "darts":
            return keep, torch.softmax(a if len(keep) == n else a[keep], 0)
        # gdas: one Gumbel-sampled path while training; the best remaining path when evaluating
        if not self._training():
            return [keep[int(torch.argmax(a.detach()[keep]))]], None
        y = torch.softmax((a + self._gumbel[label].to(a.device)) / self.tau, 0)
        k = self._gdas_picks()[label]
        return [k], (y[k] - y[k].detach() + 1.0).view(1)

    def _gdas_picks(self) -> dict[str, int]:
        """The Gumbel-argmax path of every decision, read from the device once per draw (one host read per step,
        not one per decision: which module runs is decided on the host). ``argmax softmax((a+g)/tau) =
        argmax(a+g)``."""
        if self._picks is None:
            a = [self.alpha[lb].detach() for lb in self.labels]
            picks = torch.stack([torch.argmax(x + self._gumbel[lb].to(x.device)) for lb, x in zip(self.labels, a)])
            self._picks = dict(zip(self.labels, picks.tolist()))
        return self._picks

    def _training(self) -> bool:
        return any(m.training for _, _, m in self._installed[:1])

    # ------------------------------------------------------------------ sampling and steps
    def resample(self) -> None:
        """Draw the next path(s) from the private generator: Gumbel noise (GDAS) or a path (SPOS).

        SPOS ``sampling="uniform"``: each decision drawn independently per step (Guo et al. 2020);
        ``"fair"`` (strict fairness, Chu et al. 2021, FairNAS): each decision walks through a random permutation
        of its candidates, so over every ``n`` steps each candidate is trained exactly once (same cost, fewer
        under-trained candidates and a better supernet ranking).
        """
        for lb in self.labels:
            n = len(self.names[lb])
            if self.mode == "gdas":
                u = torch.rand(n, generator=self.generator).clamp_(1e-9, 1 - 1e-9)
                self._gumbel[lb] = -torch.log(-torch.log(u))
                self._picks = None
            elif self.mode == "spos" and self.sampling == "fair":
                if not self._queue[lb]:
                    self._queue[lb] = torch.randperm(n, generator=self.generator).tolist()
                self.path[lb] = self._queue[lb].pop()
            elif self.mode == "spos":
                self.path[lb] = int(torch.randint(n, (1,), generator=self.generator))

    def set_progress(self, progress: float) -> None:
        """Advance the schedules: DARTS- auxiliary-skip ``beta = 1 - progress`` while training."""
        self.progress = min(max(float(progress), 0.0), 1.0)
        self.aux_beta = (1.0 - self.progress) if self.remedy == "darts-" else 0.0

    def regulariser(self) -> torch.Tensor:
        """beta-DARTS: ``lambda * mean_k logsumexp(alpha_k)`` with ``lambda`` ramped by progress."""
        if self.remedy != "beta-decay":
            return torch.zeros((), device=self.alpha[self.labels[0]].device)
        lam = self.beta_decay_weight * self.progress
        return lam * torch.stack([torch.logsumexp(self.alpha[lb], 0) for lb in self.labels]).mean()

    def arch_step(
        self,
        loss_fn: Callable[[], torch.Tensor],
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        train_loss_fn: Callable[[], torch.Tensor] | None = None,
        weights: list[torch.Tensor] | None = None,
        xi: float = 0.0,
    ) -> torch.Tensor:
        """One update of ``alpha`` from the held-out loss ``loss_fn()``; returns that loss, detached and on its
        device (reading it is left to the caller: no host synchronisation per step).

        First order (default): ``grad_alpha L_val(w, alpha)``. Second order (DARTS eq. 7-8; when
        ``train_loss_fn`` and ``weights`` are given): ``grad_alpha L_val(w', alpha) - xi * (grad_alpha
        L_train(w+) - grad_alpha L_train(w-)) / (2 eps)`` with the virtual step ``w' = w - xi grad_w L_train``,
        ``w+- = w +- eps grad_w' L_val`` and ``eps = 0.01 / ||grad_w' L_val||``; weights and buffers are put back
        bit for bit afterwards. ``reduce`` averages the flat gradient over DDP ranks. Weight ``.grad`` is never
        touched (``torch.autograd.grad`` with explicit inputs), so the user's optimizer sees nothing of this step.
        """
        if self.optimizer is None:
            raise RuntimeError("SPOS has no architecture parameters to step")
        params = [self.alpha[lb] for lb in self.labels]
        if self.mode == "gdas":
            self.resample()
        grads: Sequence[torch.Tensor | None]  # None for an alpha the loss does not reach (allow_unused)
        if train_loss_fn is not None and weights:
            grads, loss = self._second_order(loss_fn, train_loss_fn, list(weights), float(xi))
        else:
            self.arch_grad = True
            try:
                loss = loss_fn()
                if self.remedy == "beta-decay":
                    loss = loss + self.regulariser().to(loss.device)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            finally:
                self.arch_grad = False
        flat = torch.cat([torch.zeros_like(p) if g is None else g.reshape(-1) for p, g in zip(params, grads)])
        if reduce is not None:
            flat = reduce(flat)
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self._picks = None  # alpha moved: GDAS' next forward picks its paths again
        return loss.detach()

    def _second_order(
        self,
        loss_fn: Callable[[], torch.Tensor],
        train_loss_fn: Callable[[], torch.Tensor],
        weights: list[torch.Tensor],
        xi: float,
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        params = [self.alpha[lb] for lb in self.labels]
        w0 = [w.detach().clone() for w in weights]
        buffers = [b for b in self._model.buffers()]
        b0 = [b.detach().clone() for b in buffers]

        def put(deltas: Sequence[torch.Tensor | None] | None = None, scale: float = 0.0) -> None:
            with torch.no_grad():
                for w, orig, d in zip(weights, w0, deltas or [None] * len(weights)):
                    w.copy_(orig if d is None else orig + scale * d)

        try:
            gw = torch.autograd.grad(train_loss_fn(), weights, allow_unused=True)  # alpha detached here
            put(gw, -xi)  # the virtual step w' = w - xi * grad_w L_train
            self.arch_grad = True
            loss = loss_fn()
            loss = loss + self.regulariser().to(loss.device)
            g = torch.autograd.grad(loss, params + weights, allow_unused=True)
            dalpha, dw = list(g[: len(params)]), list(g[len(params) :])
            norm = torch.sqrt(sum((d.pow(2).sum() for d in dw if d is not None), torch.zeros((), device=loss.device)))
            eps = 0.01 / (float(norm) + 1e-12)
            put(dw, eps)
            gp = torch.autograd.grad(train_loss_fn(), params, allow_unused=True)
            put(dw, -eps)
            gm = torch.autograd.grad(train_loss_fn(), params, allow_unused=True)
        finally:
            self.arch_grad = False
            put()
            with torch.no_grad():
                for b, orig in zip(buffers, b0):
                    b.copy_(orig)
        out: list[torch.Tensor | None] = []
        for da, p, m in zip(dalpha, gp, gm):
            hess = None if p is None or m is None else (p - m) / (2 * eps)
            out.append(da if hess is None else (hess * -xi if da is None else da - xi * hess))
        return out, loss

    # ------------------------------------------------------------------ results
    def probabilities(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha)`` per label (uniform for SPOS)."""
        return {lb: torch.softmax(self.alpha[lb].detach().cpu(), 0) for lb in self.labels}

    def export(self) -> dict[str, str]:
        """The most likely candidate per label."""
        return {lb: self.names[lb][int(torch.argmax(self.alpha[lb].detach()))] for lb in self.labels}

    def set_fixed(self, arch: Mapping[str, str] | None) -> None:
        """Evaluate one architecture of the supernet (``None``: back to the search behaviour)."""
        self.fixed = None if arch is None else {lb: self.names[lb].index(arch[lb]) for lb in self.labels}

    def restore(self, arch: dict[str, str] | None = None) -> None:
        """Put the original choice modules back (shared weights), making ``arch``'s candidates active."""
        for path, original, _mixed in reversed(self._installed):
            parent, attr = _parent(self._model, path)
            setattr(parent, attr, original)
            choice: Any = original  # a choice module: `label` and `active` are plain attributes, not submodules
            if arch is not None and hasattr(choice, "active") and choice.label in arch:
                choice.active = arch[choice.label]
        self._installed = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": {lb: a.detach().cpu().clone() for lb, a in self.alpha.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "tau": self.tau,
            "rng": self.generator.get_state(),
            "path": dict(self.path),
            "gumbel": {lb: g.clone() for lb, g in self._gumbel.items()},
            "progress": self.progress,
            "queue": {lb: list(q) for lb, q in self._queue.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["alpha"]) != sorted(self.labels):
            raise ValueError(
                f"checkpoint architecture labels {sorted(state['alpha'])} differ from the model's {sorted(self.labels)}"
            )
        with torch.no_grad():
            for lb, a in state["alpha"].items():
                self.alpha[lb].copy_(a.to(self.alpha[lb].device))
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.tau = float(state["tau"])
        self.generator.set_state(state["rng"])
        self.path = dict(state["path"])
        self._gumbel = {lb: g.clone() for lb, g in state["gumbel"].items()}
        self._picks = None
        self.set_progress(state["progress"])
        self._queue = {lb: list(state.get("queue", {}).get(lb, [])) for lb in self.labels}
