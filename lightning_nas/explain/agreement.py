"""What the student learned from the teacher: top-1 agreement, mean KL and per-class agreement/accuracy.

``AgreementAccumulator`` sums counts over batches (and, through ``state``/``from_state``, over ranks), so the
numbers are exact for a whole validation epoch. Definitions, with rows r and the class dimension last:

* agreement = mean_r [argmax z_s(r) == argmax z_t(r)]
* kl = mean_r KL(softmax(z_t(r)/T) || softmax(z_s(r)/T))
* per class c (rows whose label is c, or whose teacher prediction is c when there are no labels):
  support, agreement, student accuracy, teacher accuracy.

Rows whose label equals ``ignore_index`` (default -100, as in ``torch.nn.functional.cross_entropy``: padding
tokens, unlabelled pixels) are left out of every number; any other label outside ``[0, classes)`` is an error.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

AGREEMENT_COLUMNS = ["class", "support", "agreement", "student_acc", "teacher_acc"]


class AgreementAccumulator:
    """Accumulate teacher-student agreement statistics over batches; ``compute()`` gives the epoch numbers.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain import AgreementAccumulator
        >>> acc = AgreementAccumulator()
        >>> teacher = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
        >>> acc.update(teacher, teacher, targets=torch.tensor([0, 0]))
        >>> acc.update(torch.tensor([[0.0, 3.0]]), torch.tensor([[3.0, 0.0]]), targets=torch.tensor([0]))
        >>> out = acc.compute()
        >>> round(out["agreement"], 3)  # 2 of 3 rows predict the teacher's class
        0.667
        >>> [round(v, 3) for v in out["rows"][0]]  # class 0: support, agreement, student acc, teacher acc
        [0, 3, 0.667, 0.333, 0.667]
    """

    def __init__(self, temperature: float = 1.0, ignore_index: int | None = -100) -> None:
        self.temperature = float(temperature)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reset()

    def reset(self) -> None:
        self.num_classes = 0
        self.totals = torch.zeros(3, dtype=torch.float64)  # rows, agreements, summed KL
        self.per_class = torch.zeros(0, 4, dtype=torch.float64)  # support, agree, student ok, teacher ok
        self.labelled = False

    def _grow(self, c: int) -> None:
        if c > self.num_classes:
            extra = torch.zeros(c - self.num_classes, 4, dtype=torch.float64)
            self.per_class = torch.cat([self.per_class, extra])
            self.num_classes = c

    @torch.no_grad()
    def update(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None
    ) -> None:
        c = student_logits.shape[-1]
        s = student_logits.detach().reshape(-1, c).float().cpu()
        t = teacher_logits.detach().reshape(-1, c).float().cpu()
        self._grow(c)
        y = None
        if targets is not None and targets.numel() == len(s) and not targets.is_floating_point():
            y = targets.detach().reshape(-1).cpu().long()
            keep = y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
            out_of_range = keep & ((y < 0) | (y >= c))
            if out_of_range.any():
                raise ValueError(
                    f"agreement: labels must lie in [0, {c}) or equal ignore_index={self.ignore_index}, "
                    f"got {int(y[out_of_range][0])}"
                )
            s, t, y = s[keep], t[keep], y[keep]  # ignored rows (padding, unlabelled) count nowhere
            self.labelled = True
        ps, pt = s.argmax(1), t.argmax(1)
        agree = (ps == pt).double()
        kl = (
            F.kl_div(
                F.log_softmax(s / self.temperature, 1),
                F.log_softmax(t / self.temperature, 1),
                log_target=True,
                reduction="none",
            )
            .sum(1)
            .double()
        )
        self.totals += torch.stack([torch.tensor(float(len(s)), dtype=torch.float64), agree.sum(), kl.sum()])
        key = y if y is not None else pt
        ok_s = (ps == y).double() if y is not None else torch.zeros(len(s), dtype=torch.float64)
        ok_t = (pt == y).double() if y is not None else torch.zeros(len(s), dtype=torch.float64)
        stats = torch.stack([torch.ones(len(s), dtype=torch.float64), agree, ok_s, ok_t], 1)
        self.per_class.index_add_(0, key, stats)

    def state(self) -> torch.Tensor:
        """All counts as one float64 tensor (sum it across ranks, then ``load_state``)."""
        return torch.cat(
            [self.totals, torch.tensor([float(self.labelled)], dtype=torch.float64), self.per_class.reshape(-1)]
        )

    def load_state(self, state: torch.Tensor, num_classes: int) -> None:
        state = state.detach().cpu().double()
        self.totals, self.labelled = state[:3].clone(), bool(state[3] > 0)
        self.num_classes = num_classes
        self.per_class = state[4:].reshape(num_classes, 4).clone()

    def compute(self) -> dict[str, Any]:
        """``{"agreement", "kl", "rows": [[class, support, agreement, student_acc, teacher_acc], ...]}``."""
        n, agree, kl = self.totals.tolist()
        rows = []
        for c, (sup, a, s_ok, t_ok) in enumerate(self.per_class.tolist()):
            if sup > 0:
                rows.append(
                    [c, int(sup), a / sup, s_ok / sup if self.labelled else None, t_ok / sup if self.labelled else None]
                )
        return {"agreement": agree / n if n else float("nan"), "kl": kl / n if n else float("nan"), "rows": rows}


def agreement(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int | None = -100,
) -> dict[str, Any]:
    """One-shot version of ``AgreementAccumulator`` for a single batch of logits.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain import agreement
        >>> student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> teacher = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
        >>> out = agreement(student, teacher)
        >>> out["agreement"], round(out["kl"], 3)  # the same top-1 on one row of two; mean KL(teacher || student)
        (0.5, 0.43)
    """
    acc = AgreementAccumulator(temperature, ignore_index)
    acc.update(student_logits, teacher_logits, targets)
    return acc.compute()


__all__ = ["AGREEMENT_COLUMNS", "AgreementAccumulator", "agreement"]
