"""The tracking sink: scalars, histograms, tables, images and line series to W&B, other loggers and disk.

Files on disk (always written, under ``Tracker.files_dir``):

``index.jsonl``          one line per call: ``{"kind", "key", "step", "file"}``; the report reads it
``scalars.jsonl``        ``{"step": s, key: value, ...}``
``histograms/<key>.jsonl``  ``{"step", "counts", "edges", "mean", "std", "min", "max"}`` per call
``tables/<key>.jsonl``   ``{"step", "columns", "rows"}`` per call (and ``<key>.csv``, the latest)
``images/<key>-<step>.png``
``series/<key>.json``    ``{"xs", "ys": {name: [...]}, "title", "xname"}`` (the latest)
``summary.json``         final values
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TRACKER_ATTR = "_lightning_nas_tracker"
#: the folder (under the W&B run's files/, the logger's log_dir, or default_root_dir) that holds the file copy
FILES_DIRNAME = "nas_files"


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "value"


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v  # NaN/inf stay floats (JSON files write NaN/Infinity, which json.loads reads back)


def to_uint8_image(image: Any) -> np.ndarray:
    """Return an ``HxW`` or ``HxWxC`` uint8 array from a tensor/array (CHW or HWC) or a matplotlib figure.

    W&B does not rescale float images, so floats are mapped to [0, 255] here: an image already in [0, 1]
    is multiplied by 255, anything else is min-max scaled.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from lightning_nas.tracking import to_uint8_image
        >>> image = to_uint8_image(torch.rand(3, 4, 5))  # CHW floats in [0, 1]
        >>> image.dtype, image.shape
        (dtype('uint8'), (4, 5, 3))
        >>> to_uint8_image(np.array([[0.0, 2.0]])).tolist()  # outside [0, 1]: min-max scaled
        [[0, 255]]
    """
    if hasattr(image, "canvas") and hasattr(image, "savefig"):  # matplotlib figure
        import matplotlib.pyplot as plt

        image.canvas.draw()
        arr = np.asarray(image.canvas.buffer_rgba())[..., :3].copy()
        plt.close(image)
        return arr
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3):  # CHW -> HWC
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"an image must be HxW, HxWxC or CxHxW, got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not (lo >= 0.0 and hi <= 1.0):
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


class Tracker:
    """Log scalars, histograms, tables, images and line series to every attached destination.

    Args:
        loggers: Lightning loggers. A ``WandbLogger`` receives real W&B media; any other logger receives
            scalars through ``log_metrics``.
        files_dir: where the file copy of everything goes (created on first write).
        enabled: ``False`` on non-zero ranks: every call is then a no-op.
        step: default step for calls that give none (a callable, e.g. ``lambda: trainer.global_step``).

    Examples:
        Without a Lightning logger everything goes to the file sink (a ``WandbLogger`` gets real W&B media too):

        >>> import json
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_nas.tracking import Tracker
        >>> folder = Path(tempfile.mkdtemp())
        >>> tracker = Tracker(files_dir=folder)
        >>> tracker.log_scalars({"prune/params": 1234.0}, step=3)
        >>> tracker.log_table("prune/importance", ["layer", "kept", "removed"], [["conv1", 0.9, 0.1]])
        >>> tracker.log_histogram("prune/conv1/importance_kept", [0.5, 0.7, 0.9])
        >>> sorted(p.name for p in folder.iterdir())
        ['histograms', 'index.jsonl', 'scalars.jsonl', 'tables']
        >>> row = json.loads((folder / "scalars.jsonl").read_text().splitlines()[0])
        >>> row["prune/params"], row["step"]
        (1234.0, 3)
    """

    def __init__(
        self,
        loggers: Sequence[Any] = (),
        files_dir: str | Path = "lightning_nas_files",
        enabled: bool = True,
        step: Any = None,
    ) -> None:
        from lightning.pytorch.loggers import Logger

        for lg in loggers:
            if not isinstance(lg, Logger):
                raise TypeError(
                    f"`loggers` must hold lightning.pytorch.loggers.Logger instances, got {type(lg).__name__}"
                )
        self.loggers = list(loggers)
        self.files_dir = Path(files_dir)
        self.enabled = enabled
        self._step_fn = step
        self._fallback_step = 0
        self._wandb_warned = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trainer(cls, trainer: Any) -> Tracker:
        """The tracker of this trainer (made once and cached on the trainer)."""
        existing = getattr(trainer, _TRACKER_ATTR, None)
        if existing is not None:
            return existing
        import lightning as L

        if not isinstance(trainer, L.Trainer):
            raise TypeError(f"`trainer` must be a lightning.Trainer, got {type(trainer).__name__}")
        loggers = list(trainer.loggers)
        enabled = bool(trainer.is_global_zero)
        tracker = cls(loggers, cls._files_dir_for(trainer, loggers, enabled), enabled, step=lambda: trainer.global_step)
        setattr(trainer, _TRACKER_ATTR, tracker)
        return tracker

    @staticmethod
    def _files_dir_for(trainer: Any, loggers: list[Any], enabled: bool) -> Path:
        wb = _wandb_logger(loggers)
        if wb is not None and enabled:
            return Path(wb.experiment.dir) / FILES_DIRNAME
        for lg in loggers:
            log_dir = getattr(lg, "log_dir", None)
            if log_dir:
                return Path(log_dir) / FILES_DIRNAME
        return Path(trainer.default_root_dir) / FILES_DIRNAME

    # ------------------------------------------------------------------ helpers
    @property
    def wandb_run(self) -> Any:
        """The W&B run when a ``WandbLogger`` is attached (rank zero), else ``None``."""
        wb = _wandb_logger(self.loggers)
        if wb is None or not self.enabled:
            return None
        try:
            return wb.experiment
        except Exception as exc:
            self._warn_wandb(exc)
            return None

    def _step(self, step: int | None) -> int:
        if step is not None:
            return int(step)
        if self._step_fn is not None:
            return int(self._step_fn())
        return self._fallback_step

    def _path(self, *parts: str) -> Path:
        p = self.files_dir.joinpath(*parts)  # trusted-path: constants and _safe() names
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _append(self, rel: str, record: Mapping[str, Any]) -> None:
        with self._path(rel).open("a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def _index(self, kind: str, key: str, step: int, file: str | None) -> None:
        self._append("index.jsonl", {"kind": kind, "key": key, "step": step, "file": file})

    def _wandb_log(self, payload: Mapping[str, Any] | Callable[[], Mapping[str, Any]], step: int) -> None:
        """Log to W&B; ``payload`` may be a function building the media, so that building it is guarded too."""
        run = self.wandb_run
        if run is not None:
            try:
                built = payload() if callable(payload) else payload
                run.log(dict(built, **{"trainer/global_step": step}))
            except Exception as exc:
                self._warn_wandb(exc)

    def _warn_wandb(self, exc: Exception) -> None:
        if not self._wandb_warned:
            self._wandb_warned = True
            warnings.warn(
                f"lightning_nas: logging to a logger failed ({type(exc).__name__}: {exc}); training goes "
                f"on and everything is still written under {self.files_dir}",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ public API
    def log_scalars(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Scalars to every logger (``log_metrics``) and to ``scalars.jsonl``."""
        if not self.enabled or not metrics:
            return
        s = self._step(step)
        clean = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        for lg in self.loggers:
            try:
                lg.log_metrics(clean, step=s)
            except Exception as exc:
                self._warn_wandb(exc)
        self._append("scalars.jsonl", dict(clean, step=s))
        for k in clean:
            self._index("scalar", k, s, "scalars.jsonl")

    def log_histogram(self, key: str, values: Any, step: int | None = None, bins: int = 64) -> None:
        """A histogram of ``values`` (any array-like); ``wandb.Histogram`` on W&B."""
        if not self.enabled:
            return
        s = self._step(step)
        arr = np.asarray(
            values.detach().cpu().float() if isinstance(values, torch.Tensor) else values, dtype=np.float64
        ).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return
        counts, edges = np.histogram(arr, bins=min(bins, 512))
        rel = f"histograms/{_safe(key)}.jsonl"
        self._append(
            rel,
            {
                "step": s,
                "counts": counts,
                "edges": edges,
                "mean": arr.mean(),
                "std": arr.std(),
                "min": arr.min(),
                "max": arr.max(),
            },
        )
        self._index("histogram", key, s, rel)
        if self.wandb_run is not None:
            import wandb

            self._wandb_log(lambda: {key: wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))}, s)

    def log_table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None
    ) -> None:
        """A table; ``wandb.Table`` on W&B, ``tables/<key>.jsonl`` and ``.csv`` on disk."""
        if not self.enabled:
            return
        columns = [str(c) for c in columns]
        rows = [[_jsonable(v) for v in r] for r in rows]
        for r in rows:
            if len(r) != len(columns):
                raise ValueError(f"table {key!r}: a row has {len(r)} values but there are {len(columns)} columns")
        s = self._step(step)
        rel = f"tables/{_safe(key)}.jsonl"
        self._append(rel, {"step": s, "columns": columns, "rows": rows})
        with self._path(f"tables/{_safe(key)}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)
        self._index("table", key, s, rel)
        if self.wandb_run is not None:
            import wandb

            self._wandb_log(lambda: {key: wandb.Table(columns=list(columns), data=rows)}, s)

    def log_image(self, key: str, image: Any, caption: str | None = None, step: int | None = None) -> None:
        """An image (array/tensor, CHW or HWC, or a matplotlib figure); PNG on disk, ``wandb.Image`` on W&B."""
        if not self.enabled:
            if hasattr(image, "savefig"):
                import matplotlib.pyplot as plt

                plt.close(image)
            return
        arr = to_uint8_image(image)
        s = self._step(step)
        rel = f"images/{_safe(key)}-{s}.png"
        import matplotlib.pyplot as plt

        plt.imsave(self._path(rel), arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
        self._index("image", key, s, rel)
        if self.wandb_run is not None:
            import wandb

            self._wandb_log(lambda: {key: wandb.Image(arr, caption=caption)}, s)

    def log_line_series(
        self,
        key: str,
        xs: Sequence[float],
        ys: Mapping[str, Sequence[float]],
        title: str | None = None,
        xname: str = "step",
        step: int | None = None,
    ) -> None:
        """Several lines over one x axis (e.g. a choice's candidate probabilities per epoch)."""
        if not self.enabled:
            return
        xs = [_jsonable(x) for x in xs]
        names = list(ys)
        series = [[_jsonable(v) for v in ys[n]] for n in names]
        for n, ser in zip(names, series):
            if len(ser) != len(xs):
                raise ValueError(f"line series {key!r}: {n!r} has {len(ser)} points but xs has {len(xs)}")
        s = self._step(step)
        rel = f"series/{_safe(key)}.json"
        self._path(rel).write_text(
            json.dumps({"xs": xs, "ys": dict(zip(names, series)), "title": title or key, "xname": xname, "step": s})
        )
        self._index("series", key, s, rel)
        if self.wandb_run is not None:
            import wandb

            self._wandb_log(
                lambda: {key: wandb.plot.line_series(xs=xs, ys=series, keys=names, title=title or key, xname=xname)}, s
            )

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Final values: the W&B run summary and ``summary.json``."""
        if not self.enabled or not values:
            return
        values = {k: _jsonable(v) for k, v in values.items()}
        path = self._path("summary.json")
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        path.write_text(json.dumps(current, indent=2))
        run = self.wandb_run
        if run is not None:
            try:
                run.summary.update(values)
            except Exception as exc:
                self._warn_wandb(exc)


def _wandb_logger(loggers: Sequence[Any]) -> Any:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return None
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return lg
    return None
