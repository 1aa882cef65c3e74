"""Why did the search choose this architecture? Pure-torch explanations of one-shot decisions.

* ``probabilities`` / ``entropy``: how sure each decision is (``H = -sum_i p_i log p_i``, nats; ``log n`` is
  undecided, 0 is certain).
* ``decision_table``: per label the chosen candidate, its probability and the margin to the runner-up.
* ``op_ablation``: the change of the supernet's validation loss when one candidate is taken out of one
  decision (``L(without c) - L(supernet)``); a large positive value means the supernet relies on ``c``.
* ``reasons``: one line per decision combining both, for the model card.
* ``kendall_tau``: rank agreement of two score lists (the supernet's ranking vs. standalone training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch


def probabilities(alpha: Mapping[str, torch.Tensor], names: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """``{label: {candidate: softmax(alpha)_i}}``.

    Examples:
        >>> import torch
        >>> from lightning_nas.explain.architecture import probabilities
        >>> probabilities({"block1": torch.tensor([0.0, 0.0])}, {"block1": ["conv3", "skip"]})
        {'block1': {'conv3': 0.5, 'skip': 0.5}}
    """
    out = {}
    for lb, a in alpha.items():
        p = torch.softmax(torch.as_tensor(a, dtype=torch.float64).detach().cpu(), 0)
        out[lb] = {n: float(v) for n, v in zip(names[lb], p)}
    return out


def entropy(probs: Mapping[str, float]) -> float:
    """Shannon entropy (nats) of one decision's candidate probabilities.

    Examples:
        >>> import math
        >>> from lightning_nas.explain.architecture import entropy
        >>> math.isclose(entropy({"conv3": 0.5, "skip": 0.5}), math.log(2))  # undecided: log n
        True
        >>> entropy({"conv3": 1.0, "skip": 0.0}) == 0  # certain
        True
    """
    return float(-sum(p * math.log(p) for p in probs.values() if p > 0))


def decision_table(probs: Mapping[str, Mapping[str, float]]) -> list[list]:
    """Rows ``[label, chosen, probability, runner_up, margin, entropy]``, one per decision.

    Examples:
        >>> from lightning_nas.explain.architecture import TABLE_COLUMNS, decision_table
        >>> TABLE_COLUMNS
        ['label', 'chosen', 'probability', 'runner_up', 'margin', 'entropy']
        >>> label, chosen, p, runner_up, margin, h = decision_table({"block1": {"conv3": 0.7, "skip": 0.3}})[0]
        >>> label, chosen, runner_up, round(margin, 2)
        ('block1', 'conv3', 'skip', 0.4)
    """
    rows = []
    for lb, p in probs.items():
        ranked = sorted(p.items(), key=lambda kv: -kv[1])
        (best, pb), (second, ps) = ranked[0], ranked[1]
        rows.append([lb, best, pb, second, pb - ps, entropy(p)])
    return rows


TABLE_COLUMNS = ["label", "chosen", "probability", "runner_up", "margin", "entropy"]


def op_ablation(
    evaluate: Callable[[str | None, str | None], float], names: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """``{label: {candidate: evaluate(label, candidate) - evaluate(None, None)}}``.

    ``evaluate(label, candidate)`` returns the validation loss of the supernet with ``candidate`` removed
    from ``label`` (``None, None``: nothing removed).

    Examples:
        >>> from lightning_nas.explain.architecture import op_ablation
        >>> losses = {None: 0.50, "conv3": 0.90, "skip": 0.52}  # val loss with that candidate removed
        >>> out = op_ablation(lambda label, cand: losses[cand], {"block1": ["conv3", "skip"]})
        >>> {c: round(d, 2) for c, d in out["block1"].items()}  # the supernet relies on conv3
        {'conv3': 0.4, 'skip': 0.02}
    """
    base = float(evaluate(None, None))
    return {lb: {c: float(evaluate(lb, c)) - base for c in cands} for lb, cands in names.items()}


def switch_ablation(
    score: Callable[[Mapping[str, str]], float], best: Mapping[str, str], names: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """``{label: {candidate: score(best) - score(best with label switched to candidate)}}``: how much the
    chosen architecture loses when one decision is changed (0 for the chosen candidate itself).

    Examples:
        >>> from lightning_nas.explain.architecture import switch_ablation
        >>> switch_ablation(lambda a: {"a": 1.0, "b": 0.25}[a["op"]], {"op": "a"}, {"op": ["a", "b"]})
        {'op': {'a': 0.0, 'b': 0.75}}
    """
    base = float(score(best))
    return {lb: {c: base - float(score({**best, lb: c})) for c in cands} for lb, cands in names.items()}


def reasons(
    table: Sequence[Sequence],
    ablation: Mapping[str, Mapping[str, float]] | None = None,
    score_name: str = "probability",
    ablation_kind: str = "remove",
) -> dict[str, str]:
    """One sentence per decision: what won, by how much, and what the ablation says.

    ``ablation_kind="remove"``: ``ablation[label][c]`` is the supernet's val-loss change without ``c``;
    ``"switch"``: the val-loss change of the best subnet when ``label`` is switched to ``c`` (SPOS).

    Examples:
        >>> from lightning_nas.explain.architecture import decision_table, reasons
        >>> table = decision_table({"block1": {"conv3": 0.7, "skip": 0.3}})
        >>> print(reasons(table, {"block1": {"conv3": 0.4, "skip": 0.02}})["block1"])  # doctest: +ELLIPSIS
        block1: conv3 chosen (probability 0.70, +0.40 over skip; entropy 0.61); removing conv3 changes ... by +0.400 ...
    """
    out = {}
    for lb, best, pb, second, margin, ent in (r[:6] for r in table):
        text = f"{lb}: {best} chosen ({score_name} {pb:.2f}, {margin:+.2f} over {second}; entropy {ent:.2f})"
        if ablation and lb in ablation:
            abl = ablation[lb]
            if ablation_kind == "switch":
                alts = {c: d for c, d in abl.items() if c != best}
                near = min(alts, key=alts.__getitem__)
                text += f"; switching to the closest alternative {near} changes subnet val loss by {alts[near]:+.3f}"
            else:
                top = max(abl, key=abl.__getitem__)
                text += f"; removing {best} changes supernet val loss by {abl[best]:+.3f}"
                text += " (the largest of its candidates)" if top == best else f" (largest: {top} {abl[top]:+.3f})"
        out[lb] = text
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two equally long score lists (``scipy.stats.kendalltau``).

    Examples:
        >>> from lightning_nas.explain.architecture import kendall_tau
        >>> kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]), kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])
        (1.0, -1.0)
    """
    from scipy.stats import kendalltau

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"kendall_tau needs two lists of equal length >= 2, got {len(a)} and {len(b)}")
    tau = kendalltau(list(a), list(b)).statistic
    return float("nan") if tau is None else float(tau)
