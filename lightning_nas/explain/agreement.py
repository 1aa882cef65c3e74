"""What the student learned from the teacher: top-1 agreement, mean KL and per-class agreement/accuracy.

``Agreement`` is a torchmetrics ``Metric``: its states are sums (``dist_reduce_fx="sum"``), so ``compute()`` gives
exact numbers for a whole epoch over every DDP rank, and ``update`` stays on the logits' device with no host
synchronisation (nothing is copied to the CPU, no boolean-mask indexing, no check that reads a value back: a
label out of range is counted and reported by ``compute()``). ``agreement_stats`` is the functional core.
Definitions, with rows r and the class dimension last:

* agreement = mean_r [argmax z_s(r) == argmax z_t(r)]
* kl = mean_r KL(softmax(z_t(r)/T) || softmax(z_s(r)/T))
* per class c (rows whose label is c, or whose teacher prediction is c when there are no labels):
  support, agreement, student accuracy, teacher accuracy.

Rows whose label equals ``ignore_index`` (default -100, as in ``torch.nn.functional.cross_entropy``: padding
tokens, unlabelled pixels) are left out of every number; any other label outside ``[0, classes)`` is an error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torchmetrics import Metric

AGREEMENT_COLUMNS = ["class", "support", "agreement", "student_acc", "teacher_acc"]


class AgreementStats(NamedTuple):
    """Sums over a batch: ``totals`` (rows, agreements) int64, ``kl`` float64, ``per_class`` (C, 4) int64 of
    (support, agree, student ok, teacher ok), ``labelled`` 0/1, ``bad`` count of labels out of range and
    ``bad_label`` the largest such label (or the int64 minimum)."""

    totals: torch.Tensor
    kl: torch.Tensor
    per_class: torch.Tensor
    labelled: torch.Tensor
    bad: torch.Tensor
    bad_label: torch.Tensor


_NO_LABEL = torch.iinfo(torch.int64).min


@torch.no_grad()
def agreement_stats(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int | None = -100,
) -> AgreementStats:
    """The sums one batch adds to ``Agreement``'s states, computed on the logits' device without a host sync."""
    c = student_logits.shape[-1]
    s = student_logits.detach().reshape(-1, c).float()
    t = teacher_logits.detach().reshape(-1, c).float()
    dev = s.device
    ps, pt = s.argmax(1), t.argmax(1)
    labelled = targets is not None and targets.numel() == len(s) and not targets.is_floating_point()
    if labelled:
        assert targets is not None  # labelled says so
        y = targets.detach().reshape(-1).to(device=dev, dtype=torch.long)
        keep = y != ignore_index if ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
        out_of_range = keep & ((y < 0) | (y >= c))
        keep = keep & ~out_of_range
        key = torch.where(keep, y, torch.zeros_like(y))  # weight 0 rows land in class 0 and add nothing
        bad = out_of_range.sum()
        bad_label = torch.where(out_of_range, y, torch.full_like(y, _NO_LABEL)).amax() if len(y) else None
    else:
        y, keep, key = None, torch.ones_like(ps, dtype=torch.bool), pt
        bad, bad_label = torch.zeros((), dtype=torch.long, device=dev), None
    if bad_label is None:
        bad_label = torch.full((), _NO_LABEL, dtype=torch.long, device=dev)
    w = keep.long()
    agree = (ps == pt).long() * w
    kl = F.kl_div(
        F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), log_target=True, reduction="none"
    )
    kl_sum = (kl.sum(1).double() * w).sum()
    ok_s = (ps == y).long() * w if y is not None else torch.zeros_like(w)
    ok_t = (pt == y).long() * w if y is not None else torch.zeros_like(w)
    per_class = torch.zeros(c, 4, dtype=torch.long, device=dev)
    per_class.index_add_(0, key, torch.stack([w, agree, ok_s, ok_t], 1))
    totals = torch.stack([w.sum(), agree.sum()])
    flag = torch.full((), int(labelled), dtype=torch.long, device=dev)
    return AgreementStats(totals, kl_sum, per_class, flag, bad.reshape(()), bad_label.reshape(()))


class Agreement(Metric):
    """Teacher-student agreement over an epoch (a torchmetrics ``Metric``: sum states, synced over DDP ranks).

    Args:
        num_classes: logits per row; ``None``: taken from the first ``update`` (every rank must update before
            ``compute`` then, which a fit's first step guarantees).
        temperature: softmax temperature of the KL.
        ignore_index: label of rows left out (``None``: none).

    ``compute()`` returns ``{"agreement", "kl", "rows": [[class, support, agreement, student_acc, teacher_acc],
    ...]}`` (plain Python numbers; NaN without rows) and raises ``ValueError`` if a label was out of range.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    # the states add_state registers (declared for the type checker)
    totals: torch.Tensor
    kl: torch.Tensor
    labelled: torch.Tensor
    bad: torch.Tensor
    bad_label: torch.Tensor
    per_class: torch.Tensor

    def __init__(
        self, num_classes: int | None = None, temperature: float = 1.0, ignore_index: int | None = -100, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.add_state("totals", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("kl", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bad", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bad_label", torch.full((), _NO_LABEL, dtype=torch.long), dist_reduce_fx="max")
        self._add_per_class(self.num_classes or 0)

    def _add_per_class(self, c: int, device: torch.device | None = None) -> None:
        self.add_state("per_class", torch.zeros(c, 4, dtype=torch.long, device=device), dist_reduce_fx="sum")

    def update(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> None:
        c = student_logits.shape[-1]
        if self.num_classes is None:
            self.num_classes = c
            self._add_per_class(c, self.totals.device)
        elif c != self.num_classes:
            raise ValueError(f"agreement: logits have {c} classes, the metric was made for {self.num_classes}")
        st = agreement_stats(student_logits, teacher_logits, targets, self.temperature, self.ignore_index)
        self.totals += st.totals
        self.kl += st.kl
        self.per_class += st.per_class
        self.labelled += st.labelled
        self.bad += st.bad
        self.bad_label.copy_(torch.maximum(self.bad_label, st.bad_label))

    def compute(self) -> dict[str, Any]:
        if int(self.bad):
            raise ValueError(
                f"agreement: labels must lie in [0, {self.num_classes}) or equal ignore_index={self.ignore_index}, "
                f"got {int(self.bad_label)}"
            )
        n, agree = self.totals.tolist()
        kl, labelled = float(self.kl), bool(self.labelled > 0)
        rows = []
        for c, (sup, a, s_ok, t_ok) in enumerate(self.per_class.tolist()):
            if sup > 0:
                rows.append([c, sup, a / sup, s_ok / sup if labelled else None, t_ok / sup if labelled else None])
        return {"agreement": agree / n if n else float("nan"), "kl": kl / n if n else float("nan"), "rows": rows}


AgreementAccumulator = Agreement  # the name before v0.2


def agreement(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int | None = -100,
) -> dict[str, Any]:
    """``Agreement`` of a single batch of logits."""
    metric = Agreement(student_logits.shape[-1], temperature, ignore_index).to(student_logits.device)
    metric.update(student_logits, teacher_logits, targets)
    return metric.compute()


__all__ = ["AGREEMENT_COLUMNS", "Agreement", "AgreementAccumulator", "AgreementStats", "agreement", "agreement_stats"]
