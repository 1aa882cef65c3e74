"""The reference profile: what the training/validation data looked like, for drift checks later.

A profile summarises reference inputs ``x`` (shape ``(N, *input_shape)``) in *features*:

- ``feature_mode="feature"``: every input element is a feature (``x[0,3,4]``); the default when an input
  has at most ``max_features`` elements (digits: 64 pixels).
- ``feature_mode="channel"``: one feature per channel, the per-sample channel mean (``channel0``); used for
  larger images, where per-pixel tests would be both slow and redundant.

Per feature it stores mean/std/min/max, the PSI bins (cut points at the reference deciles and the reference
fraction in each bin) and a random sample of reference values (for the Kolmogorov-Smirnov test). It also
stores the distribution of predicted classes and an attribution summary: the share of the mean absolute
Integrated-Gradients attribution that falls on each feature.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_nas._validate import check_choice, check_int, schema_errors

FORMAT = "lightning_nas.profile"
VERSION = 1
FEATURE_MODES = ("auto", "feature", "channel")
_FEATURE_KEYS = ("name", "mean", "std", "min", "max", "cuts", "fractions")


def feature_matrix(x: np.ndarray, mode: str) -> np.ndarray:
    """``(N, F)`` features of inputs ``x`` (``"feature"``: flattened; ``"channel"``: per-channel means).

    Examples:
        >>> import numpy as np
        >>> from lightning_nas.deploy.profile import feature_matrix
        >>> x = np.ones((5, 3, 4, 4), np.float32)
        >>> feature_matrix(x, "feature").shape, feature_matrix(x, "channel").shape
        ((5, 48), (5, 3))
    """
    x = np.asarray(x, dtype=np.float64)
    if mode == "channel":
        return x.reshape(x.shape[0], x.shape[1], -1).mean(-1)
    return x.reshape(x.shape[0], -1)


def feature_names(input_shape: tuple[int, ...], mode: str) -> list[str]:
    """The names of ``feature_matrix``'s columns for inputs of ``input_shape`` (per sample).

    Examples:
        >>> from lightning_nas.deploy.profile import feature_names
        >>> feature_names((3, 4, 4), "channel")
        ['channel0', 'channel1', 'channel2']
        >>> feature_names((1, 2, 2), "feature")
        ['x[0,0,0]', 'x[0,0,1]', 'x[0,1,0]', 'x[0,1,1]']
    """
    if mode == "channel":
        return [f"channel{c}" for c in range(input_shape[0])]
    return ["x[" + ",".join(str(i) for i in idx) + "]" for idx in np.ndindex(*input_shape)]


def bin_fractions(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` in each bin ``(-inf, c1], (c1, c2], ..., (ck, inf)``.

    Examples:
        >>> import numpy as np
        >>> from lightning_nas.deploy.profile import bin_fractions
        >>> bin_fractions(np.array([0.1, 0.4, 0.6, 0.9]), cuts=np.array([0.5]))
        array([0.5, 0.5])
    """
    idx = np.searchsorted(np.asarray(cuts, dtype=np.float64), values, side="left")
    return np.bincount(idx, minlength=len(cuts) + 1) / max(len(values), 1)


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _forward_numpy(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, batch: int = 256) -> np.ndarray:
    outs = []
    dev = _device(model)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)).to(dev)
            outs.append(model(t).float().cpu().numpy())
    return np.concatenate(outs)


def attribution_share(
    model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, mode: str, n_steps: int = 16
) -> np.ndarray | None:
    """Share of mean |Integrated Gradients| attribution per feature (sums to 1; uniform if all zero).

    IG (Captum, zero baseline, target = the predicted class): ``(x - 0) * mean_alpha grad f_c(alpha x)``.
    Works on any differentiable callable, a TorchScript module included. Inputs whose attribution is not finite
    (values near float32's limit overflow in the gradients) are left out; ``None`` when none is left.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from lightning_nas.deploy.profile import attribution_share
        >>> model = torch.nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        ...     _ = model.bias.zero_()
        >>> share = attribution_share(model, np.ones((4, 3), np.float32), mode="feature")
        >>> share.round(3).tolist()  # only feature 0 drives the prediction
        [1.0, 0.0, 0.0]
    """
    from captum.attr import IntegratedGradients

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(_device(model))
    with torch.inference_mode(False), torch.enable_grad():
        with torch.no_grad():
            target = model(t).argmax(1)
        attr = IntegratedGradients(model).attribute(
            t, baselines=torch.zeros_like(t), target=target, n_steps=n_steps, internal_batch_size=512
        )
    a = np.abs(attr.detach().double().cpu().numpy())
    with np.errstate(over="ignore", invalid="ignore"):
        feats = feature_matrix(a, mode)
        feats = feats[np.isfinite(feats).all(axis=1)]
        if not len(feats):
            return None
        per_feature = feats.mean(0)
        total = per_feature.sum()
    if not np.isfinite(total) or not np.isfinite(per_feature).all():  # finite per sample, overflowing summed
        per_feature = (feats / np.maximum(feats.max(), 1e-300)).mean(0)
        total = per_feature.sum()
    return per_feature / total if total > 0 else np.full_like(per_feature, 1.0 / len(per_feature))


def _profile_schema() -> Any:
    """The pydantic schema of a profile's types (strict: numbers are numbers, finite; shapes are bounded)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    class _Strict(BaseModel):
        model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    class Feature(_Strict):
        name: str
        mean: float
        std: float
        min: float
        max: float
        cuts: list[float]
        fractions: list[float]

    class Prediction(_Strict):
        num_classes: Annotated[int, Field(ge=2, le=1_000_000)]
        fractions: list[float]

    class Attribution(_Strict):
        share: list[float]

    class Profile(_Strict):
        input_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=8)]
        features: list[Feature]
        sample: Annotated[list[list[float]], Field(min_length=2)]
        prediction: Prediction
        attribution: Attribution | None = None

    return Profile


_SCHEMA: list[Any] = []


def _check_types(data: dict[str, Any]) -> None:
    errs = schema_errors(_SCHEMA, _profile_schema, data)
    if errs:
        e = errs[0]
        loc = e["loc"]
        if e["type"] == "missing" and len(loc) == 3 and loc[0] == "features":
            lacking = [x["loc"][2] for x in errs if x["type"] == "missing" and x["loc"][:2] == loc[:2]]
            raise ValueError(
                f"reference profile entry for feature {data['features'][loc[1]].get('name')!r} lacks {lacking}"
            )
        raise ValueError(f"reference profile field {'.'.join(str(x) for x in loc)}: {e['msg'][:200]}")
    if float(np.prod(data["input_shape"], dtype=np.float64)) > 1 << 24:
        raise ValueError(f"reference profile input shape {data['input_shape']} is too large")


class ReferenceProfile:
    """Statistics of reference data for drift checks (see the module docstring). Build with ``from_data``.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from lightning_nas.deploy import ReferenceProfile
        >>> profile = ReferenceProfile.from_data(torch.nn.Linear(4, 3), np.random.default_rng(0).random((100, 4)),
        ...                                      attribution_samples=0)
        >>> profile.data["feature_mode"], len(profile.data["features"])  # PSI bins and KS sample per feature
        ('feature', 4)
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = self._validated(data)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_data(
        cls,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor | np.ndarray,
        *,
        feature_mode: str = "auto",
        max_features: int = 256,
        bins: int = 10,
        max_sample: int = 500,
        attribution_samples: int = 64,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Profile reference inputs ``x`` and ``model``'s predictions (and IG attributions) on them.

        Args:
            model: the float model (any callable mapping a float32 batch to ``(N, classes)`` scores).
            x: reference inputs, ``(N, *input_shape)``; N >= 20.
            feature_mode: ``"feature"``, ``"channel"`` or ``"auto"`` (feature when the input has at most
                ``max_features`` elements, else channel).
            bins: PSI bins per feature (cut points at the reference quantiles).
            max_sample: reference values kept per feature for the KS test.
            attribution_samples: inputs attributed with Integrated Gradients (0: no attribution summary).
        """
        check_choice("feature_mode", feature_mode, FEATURE_MODES)
        check_int("max_features", max_features, 1)
        check_int("bins", bins, 2, 100)
        check_int("max_sample", max_sample, 20)
        check_int("attribution_samples", attribution_samples, 0)
        xs = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if xs.ndim < 2 or len(xs) < 20:
            raise ValueError(f"`x` must be a batch of at least 20 reference inputs, got shape {tuple(xs.shape)}")
        if not np.isfinite(xs).all():
            raise ValueError("`x` (reference data) holds NaN or inf values")
        shape = tuple(int(s) for s in xs.shape[1:])
        if feature_mode == "auto":
            feature_mode = "feature" if int(np.prod(shape)) <= max_features or len(shape) < 2 else "channel"
        if feature_mode == "channel" and len(shape) < 2:
            raise ValueError(f"feature_mode='channel' needs (C, ...) inputs, got input shape {shape}")
        rng = np.random.default_rng(seed)
        feats = feature_matrix(xs, feature_mode)
        keep = rng.choice(len(xs), size=min(max_sample, len(xs)), replace=False)
        qs = np.linspace(0, 1, bins + 1)[1:-1]
        features = []
        for j, name in enumerate(feature_names(shape, feature_mode)):
            v = feats[:, j]
            cuts = np.unique(np.quantile(v, qs))
            features.append(
                {
                    "name": name,
                    "mean": float(v.mean()),
                    "std": float(v.std()),
                    "min": float(v.min()),
                    "max": float(v.max()),
                    "cuts": cuts.tolist(),
                    "fractions": bin_fractions(v, cuts).tolist(),
                }
            )
        scores = _forward_numpy(model, xs)
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ValueError(f"the model must output (N, classes) scores with classes >= 2, got {scores.shape}")
        classes = scores.argmax(1)
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "feature_mode": feature_mode,
            "input_shape": list(shape),
            "n_samples": int(len(xs)),
            "features": features,
            "sample": np.round(feats[keep], 6).tolist(),
            "prediction": {
                "num_classes": int(scores.shape[1]),
                "fractions": (np.bincount(classes, minlength=scores.shape[1]) / len(classes)).tolist(),
            },
            "attribution": None,
        }
        if attribution_samples:
            idx = rng.choice(len(xs), size=min(attribution_samples, len(xs)), replace=False)
            share = attribution_share(model, xs[idx], feature_mode)
            if share is not None:  # None: no reference input had a finite attribution
                data["attribution"] = {
                    "method": "IntegratedGradients",
                    "baseline": "zeros",
                    "n_steps": 16,
                    "n_samples": int(len(idx)),
                    "share": share.tolist(),
                }
        return cls(data)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference profile {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nested too deeply
            raise ValueError(
                f"reference profile {str(path)!r} is not valid JSON: {str(exc)[:200] or 'nested too deeply'}"
            ) from None
        return cls(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data))
        return path

    # ----------------------------------------------------------------- accessors
    @property
    def feature_mode(self) -> str:
        return self.data["feature_mode"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data["input_shape"])

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.data["features"]]

    @property
    def num_classes(self) -> int:
        return int(self.data["prediction"]["num_classes"])

    def features(self, x: np.ndarray) -> np.ndarray:
        """``(N, F)`` features of raw inputs ``x`` in this profile's feature mode; checks the input shape."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"inputs of shape {tuple(x.shape[1:])} do not match the reference profile's input "
                f"shape {self.input_shape}"
            )
        return feature_matrix(x, self.feature_mode)

    # ----------------------------------------------------------------- validation
    @staticmethod
    def _validated(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a lightning_nas reference profile (expected format {FORMAT!r})")
        for key in ("feature_mode", "input_shape", "features", "sample", "prediction"):
            if key not in data:
                raise ValueError(f"reference profile lacks {key!r}")
        check_choice("feature_mode", data["feature_mode"], FEATURE_MODES[1:])
        _check_types(data)
        shape = tuple(data["input_shape"])
        n_expected = shape[0] if data["feature_mode"] == "channel" else int(np.prod(shape))
        if len(data["features"]) != n_expected and n_expected > 100_000:  # no names made for a huge claimed shape
            raise ValueError(
                f"reference profile has {len(data['features'])} feature entries for the {n_expected} "
                f"features of input shape {list(shape)}"
            )
        expected = feature_names(shape, data["feature_mode"])
        got = [f.get("name") for f in data["features"]]
        missing = [n for n in expected if n not in got]
        if missing:
            raise ValueError(
                f"reference profile has no entry for feature(s) {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(expected)} missing)"
            )
        if got != expected:
            raise ValueError(f"reference profile features are not in input order; expected {expected[:3]}...")
        for f in data["features"]:
            lacking = [k for k in _FEATURE_KEYS if k not in f]
            if lacking:
                raise ValueError(f"reference profile entry for feature {f['name']!r} lacks {lacking}")
            if len(f["fractions"]) != len(f["cuts"]) + 1:
                raise ValueError(
                    f"reference profile entry for feature {f['name']!r}: {len(f['cuts'])} cuts need "
                    f"{len(f['cuts']) + 1} fractions, got {len(f['fractions'])}"
                )
        sample = np.asarray(data["sample"], dtype=np.float64)
        if sample.ndim != 2 or sample.shape[1] != len(expected) or len(sample) < 2:
            raise ValueError(f"reference profile sample must be (n >= 2, {len(expected)}), got {sample.shape}")
        pred = data["prediction"]
        if len(pred.get("fractions", [])) != pred.get("num_classes"):
            raise ValueError("reference profile prediction fractions do not match num_classes")
        attr = data.get("attribution")
        if attr is not None and len(attr.get("share", [])) != len(expected):
            raise ValueError(
                f"reference profile attribution share has {len(attr.get('share', []))} entries for "
                f"{len(expected)} features"
            )
        return data


__all__ = ["FEATURE_MODES", "ReferenceProfile", "attribution_share", "bin_fractions", "feature_matrix", "feature_names"]
