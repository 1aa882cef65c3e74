"""The model card: a JSON record of what the model is, how it was made, and what was measured."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _versions() -> dict[str, str]:
    import lightning

    import lightning_nas

    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_nas": lightning_nas.__version__,
        "python": platform.python_version(),
    }


def jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "to_dict"):
        return jsonable(v.to_dict())
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class ModelCard:
    """A model card built stage by stage, written as JSON.

    ``card.add_stage("prune", reason="...", amount=0.5, measurements=m)`` records one thing done to the
    model, in order; ``card.metrics`` and ``card.measurements`` hold the final numbers.

    Examples:
        >>> import json
        >>> import os
        >>> import tempfile
        >>> from lightning_nas.deploy import ModelCard
        >>> from lightning_nas.models import DigitsCNN
        >>> card = ModelCard("digits", model=DigitsCNN(width=8), input_spec={"shape": [1, 8, 8], "dtype": "float32"})
        >>> _ = card.add_stage("prune", reason="half the channels, 2.4x faster", amount=0.5)
        >>> path = card.save(os.path.join(tempfile.mkdtemp(), "model_card.json"))
        >>> [stage["stage"] for stage in json.loads(path.read_text())["stages"]]
        ['prune']
    """

    def __init__(
        self, name: str = "model", model: nn.Module | None = None, input_spec: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.architecture: str | None = None if model is None else str(model)
        self.input_spec = dict(input_spec or {})
        self.stages: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.measurements: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}

    def set_model(self, model: nn.Module) -> ModelCard:
        self.architecture = str(model)
        return self

    def add_stage(self, stage: str, **info: Any) -> ModelCard:
        self.stages.append({"stage": stage, **info})
        return self

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "name": self.name,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
                "architecture": self.architecture,
                "input_spec": self.input_spec,
                "stages": self.stages,
                "metrics": self.metrics,
                "measurements": self.measurements,
                **({"extra": self.extra} if self.extra else {}),
            }
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        return json.loads(Path(path).read_text())
