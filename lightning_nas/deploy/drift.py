"""Drift statistics against a reference profile: pure numpy/scipy, no Lightning, no server.

For each feature ``j`` (see ``deploy.profile``) with reference bin fractions ``p`` and current fractions ``q``
over the same bins (cut points at the reference deciles):

    PSI_j = sum_b (q_b - p_b) * ln(q_b / p_b)          (fractions floored at 1e-4)

and the two-sample Kolmogorov-Smirnov statistic ``D_j = sup_v |F_ref(v) - F_cur(v)|`` with its p-value
(``scipy.stats.ks_2samp`` against the profile's reference sample). A feature has *drifted* when both hold:
``PSI_j >= psi`` (the shift is large enough to matter) and ``p_j < ks_alpha / F`` (it is not sampling noise;
Bonferroni over the F features).

Prediction drift is the PSI between the reference and current predicted-class fractions. Attribution drift
is the total-variation distance ``0.5 * sum_j |a_j - b_j|`` between the reference and current share of mean
|Integrated Gradients| attribution per feature (0: the model leans on the same features; 1: disjoint ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lightning_nas._validate import check_int, check_range
from lightning_nas.deploy.profile import ReferenceProfile, bin_fractions

_EPS = 1e-4
NEXT_STEPS = ("none", "retrain", "re-search")


def psi(reference_fractions: Any, current_fractions: Any, eps: float = _EPS) -> float:
    """Population stability index between two distributions over the same bins (see module docstring).

    Math: with reference fractions ``p_b`` and current fractions ``q_b`` (both floored at ``eps``),
    ``PSI = sum_b (q_b - p_b) * ln(q_b / p_b)``: 0 for identical distributions; by convention below 0.1 is
    stable, 0.1-0.25 a moderate shift and 0.25 or more a major one (``DriftThresholds.psi``).

    Examples:
        >>> from lightning_nas.deploy.drift import psi
        >>> psi([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25])
        0.0
        >>> round(psi([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]), 3)  # 0.1: moderate, 0.25: major shift
        0.228
    """
    p = np.clip(np.asarray(reference_fractions, dtype=np.float64), eps, None)
    q = np.clip(np.asarray(current_fractions, dtype=np.float64), eps, None)
    if p.shape != q.shape:
        raise ValueError(f"psi: reference has {p.shape} bins but current has {q.shape}")
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class DriftThresholds:
    """When drift is declared. Validated when made.

    Args:
        psi: per-feature PSI at or above which a feature may count as drifted (0.1 moderate, 0.25 major).
        ks_alpha: family-wise significance of the per-feature KS tests (Bonferroni: ``ks_alpha / F`` each).
        prediction_psi: PSI of the predicted-class distribution that declares prediction drift.
        attribution_shift: total-variation distance of attribution shares that declares attribution drift.
        min_drifted_features: drifted features needed to declare input drift.
        research_fraction: fraction of drifted features from which re-searching is suggested over retraining.
        min_samples: fewer current samples than this give no verdict (``status="insufficient"``).

    Examples:
        >>> from lightning_nas.deploy import DriftThresholds
        >>> DriftThresholds(psi=0.1).psi
        0.1
        >>> DriftThresholds(psi=-1)
        Traceback (most recent call last):
        ...
        ValueError: ...
    """

    psi: float = 0.25
    ks_alpha: float = 0.01
    prediction_psi: float = 0.25
    attribution_shift: float = 0.35
    min_drifted_features: int = 1
    research_fraction: float = 0.5
    min_samples: int = 30

    def __post_init__(self) -> None:
        check_range("psi", self.psi, 0.0, 100.0, low_inclusive=False)
        check_range("ks_alpha", self.ks_alpha, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_range("prediction_psi", self.prediction_psi, 0.0, 100.0, low_inclusive=False)
        check_range("attribution_shift", self.attribution_shift, 0.0, 1.0, low_inclusive=False)
        check_int("min_drifted_features", self.min_drifted_features, 1)
        check_range("research_fraction", self.research_fraction, 0.0, 1.0, low_inclusive=False)
        check_int("min_samples", self.min_samples, 2)

    @classmethod
    def coerce(cls, value: DriftThresholds | dict[str, Any] | None) -> DriftThresholds:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"`thresholds` has unknown key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**value)
        raise TypeError(f"`thresholds` must be DriftThresholds, a dict or None, got {type(value).__name__}")


@dataclass
class DriftReport:
    """The outcome of ``check_drift``: per-feature statistics, the three drift scores and a verdict."""

    status: str  # "ok", "drift" or "insufficient"
    n_samples: int
    features: list[dict[str, Any]] = field(default_factory=list)  # name, psi, ks, ks_pvalue, drifted
    drifted_features: list[str] = field(default_factory=list)
    psi_max: float = 0.0
    ks_max: float = 0.0
    prediction_psi: float | None = None
    attribution_shift: float | None = None
    input_drift: bool = False
    prediction_drift: bool = False
    attribution_drift: bool = False
    next_step: str = "none"
    verdict: str = ""

    @property
    def drifted(self) -> bool:
        return self.status == "drift"

    def metrics(self) -> dict[str, float]:
        """The scalars logged under ``drift/``."""
        out = {
            "drift/psi_max": self.psi_max,
            "drift/ks_max": self.ks_max,
            "drift/drifted_features": float(len(self.drifted_features)),
            "drift/detected": float(self.drifted),
            "drift/n_samples": float(self.n_samples),
        }
        if self.prediction_psi is not None:
            out["drift/prediction_psi"] = self.prediction_psi
        if self.attribution_shift is not None:
            out["drift/attribution_shift"] = self.attribution_shift
        return out

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the per-feature table (``drift/features``), most drifted first."""
        cols = ["feature", "psi", "ks", "ks_pvalue", "drifted"]
        rows = sorted(
            ([f["name"], f["psi"], f["ks"], f["ks_pvalue"], f["drifted"]] for f in self.features),
            key=lambda r: (not r[4], -r[1]),
        )
        return cols, rows

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), drifted=self.drifted)


def check_drift(
    profile: ReferenceProfile,
    inputs: np.ndarray,
    classes: np.ndarray | None = None,
    attribution_share: np.ndarray | None = None,
    thresholds: DriftThresholds | dict[str, Any] | None = None,
) -> DriftReport:
    """Compare current data with ``profile``.

    Args:
        profile: the reference profile (from the bundle).
        inputs: current raw inputs ``(N, *input_shape)`` (or features ``(N, F)`` already).
        classes: current predicted classes ``(N,)`` (optional; prediction drift is skipped without them).
        attribution_share: current share of mean |attribution| per feature ``(F,)`` (optional).
        thresholds: ``DriftThresholds`` or a dict of its fields.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from lightning_nas.deploy import ReferenceProfile, check_drift
        >>> rng = np.random.default_rng(0)
        >>> reference = rng.random((500, 4)).astype(np.float32)
        >>> model = torch.nn.Linear(4, 3)
        >>> profile = ReferenceProfile.from_data(model, reference, attribution_samples=0)
        >>> check_drift(profile, rng.random((300, 4))).status  # the same distribution
        'ok'
        >>> report = check_drift(profile, rng.random((300, 4)) + 0.5)  # every feature shifted
        >>> report.status, report.input_drift, len(report.drifted_features)
        ('drift', True, 4)
    """
    from scipy.stats import ks_2samp

    t = DriftThresholds.coerce(thresholds)
    x = np.asarray(inputs, dtype=np.float64)
    names = profile.names
    if x.ndim == 2 and x.shape[1] == len(names) and tuple(x.shape[1:]) != profile.input_shape:
        feats = x
    else:
        feats = profile.features(x)
    if feats.shape[1] != len(names):
        extra = feats.shape[1] - len(names)
        raise ValueError(
            f"the reference profile has no entry for {extra} of the {feats.shape[1]} current features"
            if extra > 0
            else f"current data has {feats.shape[1]} features, the profile {len(names)}"
        )
    n = len(feats)
    if n < t.min_samples:
        return DriftReport(
            status="insufficient",
            n_samples=n,
            verdict=f"{n} samples; at least {t.min_samples} are needed for a verdict",
        )
    if not np.isfinite(feats).all():
        raise ValueError("current inputs hold NaN or inf values")
    sample = np.asarray(profile.data["sample"], dtype=np.float64)
    alpha = t.ks_alpha / len(names)
    rows = []
    for j, ref in enumerate(profile.data["features"]):
        v = feats[:, j]
        p = psi(ref["fractions"], bin_fractions(v, np.asarray(ref["cuts"])))
        ks = ks_2samp(sample[:, j], v)
        stat, pval = float(ks.statistic), float(ks.pvalue)
        rows.append(
            {
                "name": ref["name"],
                "psi": p,
                "ks": stat,
                "ks_pvalue": pval,
                "drifted": bool(p >= t.psi and pval < alpha),
                "mean_ref": ref["mean"],
                "mean_now": float(v.mean()),
            }
        )
    drifted = [r["name"] for r in sorted(rows, key=lambda r: -r["psi"]) if r["drifted"]]
    rep = DriftReport(
        status="ok",
        n_samples=n,
        features=rows,
        drifted_features=drifted,
        psi_max=max(r["psi"] for r in rows),
        ks_max=max(r["ks"] for r in rows),
    )
    rep.input_drift = len(drifted) >= t.min_drifted_features
    if classes is not None:
        c = np.asarray(classes).astype(np.int64).ravel()
        k = profile.num_classes
        if c.size and (c.min() < 0 or c.max() >= k):
            raise ValueError(f"predicted classes must lie in [0, {k - 1}], got [{c.min()}, {c.max()}]")
        rep.prediction_psi = psi(profile.data["prediction"]["fractions"], np.bincount(c, minlength=k) / max(c.size, 1))
        rep.prediction_drift = rep.prediction_psi >= t.prediction_psi
    ref_attr = profile.data.get("attribution")
    if attribution_share is not None and ref_attr is not None:
        a = np.asarray(attribution_share, dtype=np.float64).ravel()
        if a.shape[0] != len(names):
            raise ValueError(f"attribution_share has {a.shape[0]} entries for {len(names)} profile features")
        rep.attribution_shift = float(0.5 * np.abs(a - np.asarray(ref_attr["share"])).sum())
        rep.attribution_drift = rep.attribution_shift >= t.attribution_shift
    _verdict(rep, t, len(names))
    return rep


def _verdict(rep: DriftReport, t: DriftThresholds, n_features: int) -> None:
    """Set status, next step and a sentence naming what moved."""
    if not (rep.input_drift or rep.prediction_drift or rep.attribution_drift):
        rep.status, rep.next_step = "ok", "none"
        rep.verdict = (
            f"no drift over {rep.n_samples} samples (max PSI {rep.psi_max:.3f}, max KS {rep.ks_max:.3f}); keep serving"
        )
        return
    rep.status = "drift"
    parts = []
    if rep.input_drift:
        top = [
            f"{r['name']} (PSI {r['psi']:.2f}, mean {r['mean_ref']:.3g}->{r['mean_now']:.3g})"
            for r in sorted(rep.features, key=lambda r: -r["psi"])
            if r["drifted"]
        ]
        shown = ", ".join(top[:5]) + (", ..." if len(top) > 5 else "")
        parts.append(f"input drift in {len(rep.drifted_features)}/{n_features} features: {shown}")
    if rep.prediction_drift:
        parts.append(f"predicted-class distribution moved (PSI {rep.prediction_psi:.2f})")
    if rep.attribution_drift:
        parts.append(f"the model relies on different features (attribution shift {rep.attribution_shift:.2f})")
    broad = len(rep.drifted_features) >= t.research_fraction * n_features
    if rep.attribution_drift or broad:
        rep.next_step = "re-search"
        advice = (
            "the data changed broadly: retrain on fresh labelled data and, if accuracy stays below the "
            "card's, re-run the architecture search (lightning_nas.search) on the new data"
        )
    else:
        rep.next_step = "retrain"
        advice = "retrain (or fine-tune) on recent labelled data and check the data pipeline for the moved features"
    rep.verdict = "; ".join(parts) + f". Next step: {advice}."


__all__ = ["DriftReport", "DriftThresholds", "NEXT_STEPS", "check_drift", "psi"]
