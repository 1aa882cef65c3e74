"""Read a run for the report: the tracking sink's files and, when there is one, the W&B offline run.

Accepted ``run_dir``: a file-sink folder (``index.jsonl``/``scalars.jsonl``), a folder holding one
(``<log_dir>/nas_files``), a W&B run folder (``offline-run-*``, its ``files/nas_files`` is used), or a
W&B save dir / any folder above them (the newest run found below it).

A run folder is data from elsewhere: names read from it are joined only through ``_trust.inside`` (nothing
outside the sink or the W&B run's ``files`` folder, symlinks included, is read), images are kept only when their
bytes are PNG or JPEG, and every record of the wrong shape is skipped and named in ``RunData.skipped`` instead of
stopping the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from lightning_nas._trust import UnsafePathError, image_type, inside

#: largest file of a run read for the report (bigger ones are skipped and named)
MAX_FILE_BYTES = 64 << 20


@dataclass
class RunData:
    """Everything the report shows, by logged key."""

    name: str
    source: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"step", "columns", "rows"}
    images: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    histograms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # what could not be shown, and why (shown on the page)

    def keys(self) -> set[str]:
        return set(self.scalars) | set(self.tables) | set(self.images) | set(self.histograms) | set(self.series)


def _is_sink(p: Path) -> bool:
    return p.is_dir() and ((p / "index.jsonl").exists() or (p / "scalars.jsonl").exists())


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda q: q.stat().st_mtime) if paths else None


def locate(run_dir: str | Path) -> tuple[Path | None, Path | None]:
    """``(sink_dir, wandb_run_dir)`` for ``run_dir``; either may be ``None``, not both.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_nas.report import locate
        >>> from lightning_nas.tracking import Tracker
        >>> run = Path(tempfile.mkdtemp())
        >>> Tracker(files_dir=run / "nas_files").log_scalars({"val_acc": 0.9}, step=0)
        >>> sink, wandb_run = locate(run)
        >>> sink.name, wandb_run
        ('nas_files', None)
    """
    p = Path(run_dir)
    if not p.exists():
        raise FileNotFoundError(f"report: {str(p)!r} does not exist")
    if p.is_file() and p.suffix == ".wandb":
        p = p.parent
    sink = wb = None
    if _is_sink(p):
        sink = p
    elif _is_sink(p / "nas_files"):
        sink = p / "nas_files"
    elif _is_sink(p / "files" / "nas_files"):
        sink = p / "files" / "nas_files"
    if list(p.glob("run-*.wandb")):
        wb = p
    elif sink is not None and list(sink.parent.parent.glob("run-*.wandb")):
        wb = sink.parent.parent
    if sink is None and wb is None:
        runs = [r.parent for r in p.glob("**/run-*.wandb") if r.parent.name != "tmp"]
        wb = _newest(runs)
        if wb is not None and _is_sink(wb / "files" / "nas_files"):
            sink = wb / "files" / "nas_files"
        if wb is None:
            sink = _newest([q.parent for q in p.glob("**/nas_files/index.jsonl")])
    if sink is None and wb is None:
        raise FileNotFoundError(
            f"report: no lightning_nas files (index.jsonl) nor W&B run (run-*.wandb) under "
            f"{str(p)!r}; pass a W&B run or save dir, or a Tracker.files_dir"
        )
    return sink, wb


def _read_bytes(path: Path, data: RunData, what: str) -> bytes | None:
    try:
        if not path.is_file():
            data.skipped.append(f"{what}: {path.name!r} is not a file")
            return None
        if path.stat().st_size > MAX_FILE_BYTES:
            data.skipped.append(f"{what}: {path.name!r} is larger than {MAX_FILE_BYTES >> 20} MiB")
            return None
        return path.read_bytes()
    except OSError as exc:
        data.skipped.append(f"{what}: {path.name!r} cannot be read ({exc.strerror or type(exc).__name__})")
        return None


def _jsonl(path: Path, data: RunData | None = None, what: str = "") -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (a line that is not a JSON object is skipped: still being written,
    or not ours)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    raw = _read_bytes(path, data, what or path.name) if data is not None else path.read_bytes()
    for line in (raw or b"").decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):  # a line still being written, or not JSON
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _json(path: Path, data: RunData, what: str) -> Any:
    raw = _read_bytes(path, data, what)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        data.skipped.append(f"{what}: {path.name!r} is not valid JSON")
        return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond float
        return None


def _step(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _short(v: Any, n: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _resolve(root: Path, name: Any, data: RunData, what: str) -> Path | None:
    """``root / name`` when it stays inside ``root`` (symlinks followed); else ``None``, named as skipped."""
    try:
        return inside(root, name, "file")
    except UnsafePathError:
        data.skipped.append(f"{what}: file {_short(name)} is outside the run folder (or not a relative name); not read")
        return None


def _image(root: Path, name: Any, data: RunData, what: str) -> Path | None:
    path = _resolve(root, name, data, what)
    if path is None:
        return None
    head = _read_bytes(path, data, what)
    if head is None:
        return None
    if image_type(head) is None:
        data.skipped.append(f"{what}: file {_short(name)} is not a PNG or JPEG image; not embedded")
        return None
    return path


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_num(x) is not None for x in v)


def _valid_table(t: Any) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(t, dict)
        and isinstance(t.get("columns", []), list)
        and isinstance(t.get("rows", []), list)
        and all(isinstance(r, list) for r in t.get("rows", []))
    )


def _valid_histogram(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and _numbers(r.get("counts"))
        and _numbers(r.get("edges"))
        and len(r["edges"]) == len(r["counts"]) + 1
        and len(r["counts"]) > 0
        and all(math.isfinite(float(x)) for x in r["counts"] + r["edges"])
    )


def _valid_series(s: Any) -> bool:
    return (
        isinstance(s, dict)
        and _numbers(s.get("xs", []))
        and isinstance(s.get("ys", {}), dict)
        and all(_numbers(y) and len(y) == len(s.get("xs", [])) for y in s.get("ys", {}).values())
    )


def _read_sink(sink: Path, data: RunData) -> None:
    """Read a ``nas_files`` folder: scalars, the index of media (images, tables, histograms, series), summary;
    whatever cannot be read is named in ``data.skipped``."""
    _read_scalars(sink, data)
    latest: dict[tuple[str, str], tuple[Any, str]] = {}
    for kind, key, step, rel, what in _read_index(sink, data):
        if kind == "image":
            path = _image(sink, rel, data, what)
            if path is not None:
                data.images.setdefault(key, []).append((step, path))
        else:
            latest[(kind, key)] = (rel, what)
    for (kind, key), (rel, what) in latest.items():
        if kind in ("table", "histogram", "series"):
            _read_media(sink, data, kind, key, rel, what)
    if (sink / "summary.json").exists():
        summary = _json(sink / "summary.json", data, "summary.json")
        if isinstance(summary, dict):
            data.summary.update(summary)
        elif summary is not None:
            data.skipped.append("summary.json: not a JSON object")


def _read_scalars(sink: Path, data: RunData) -> None:
    bad_steps = 0
    for rec in _jsonl(sink / "scalars.jsonl", data, "scalars.jsonl"):
        step = _step(rec.get("step", 0))
        if step is None:
            bad_steps += 1
            continue
        for k, v in rec.items():
            if k != "step" and _num(v) is not None:
                data.scalars.setdefault(k, []).append((step, float(v)))
    if bad_steps:
        data.skipped.append(f"scalars.jsonl: {bad_steps} record(s) whose step is not an integer")


def _read_index(sink: Path, data: RunData) -> list[tuple[str, str, int, Any, str]]:
    """``(kind, key, step, file, what)`` of each well-formed non-scalar entry of ``index.jsonl``."""
    index = []
    for n, e in enumerate(_jsonl(sink / "index.jsonl", data, "index.jsonl"), 1):
        what = f"index.jsonl entry {n}"
        if not isinstance(e.get("kind"), str) or not isinstance(e.get("key"), str):
            data.skipped.append(f"{what}: no 'kind'/'key' strings")
            continue
        what = f"{e['kind']} {e['key']!r}"
        if e["kind"] == "scalar":
            continue
        if e.get("file") is None:
            data.skipped.append(f"{what}: the index entry names no file")
            continue
        step = _step(e.get("step", 0))
        if step is None:
            data.skipped.append(f"{what}: step {_short(e.get('step'))} is not an integer")
            continue
        index.append((e["kind"], e["key"], step, e["file"], what))
    return index


def _read_media(sink: Path, data: RunData, kind: str, key: str, rel: Any, what: str) -> None:
    """The latest table, histogram or line series of ``key``, checked for shape before it is kept."""
    path = _resolve(sink, rel, data, what)
    if path is None:
        return
    if not path.exists():
        data.skipped.append(f"{what}: file {_short(rel)} does not exist")
        return
    if kind == "table":
        recs = _jsonl(path, data, what)
        if recs and _valid_table(recs[-1]):
            data.tables[key] = recs[-1]
        elif recs:
            data.skipped.append(f"{what}: {rel!r} does not hold columns and rows (lists)")
    elif kind == "histogram":
        recs = _jsonl(path, data, what)
        good = [r for r in recs if _valid_histogram(r) and _step(r.get("step", 0)) is not None]
        if len(good) < len(recs):
            data.skipped.append(
                f"{what}: {len(recs) - len(good)} record(s) in {rel!r} are not histograms "
                "(counts and edges of matching lengths)"
            )
        if good:
            data.histograms[key] = good
    else:
        s = _json(path, data, what)
        if _valid_series(s):
            data.series[key] = s
        elif s is not None:
            data.skipped.append(f"{what}: {rel!r} is not a line series (xs and ys lists of numbers)")


def _read_wandb(run: Path, data: RunData, media: bool) -> None:
    from lightning_nas.tracking import read_offline_run

    try:
        history, summary, config = read_offline_run(run, timeout=0.5)
    except (OSError, ValueError) as exc:
        data.skipped.append(f"W&B run {run.name!r}: cannot be read ({(str(exc).splitlines() or [''])[0][:160]})")
        return
    files = run / "files"
    wb_scalars: dict[str, list[tuple[int, float]]] = {}
    for i, row in enumerate(history):
        step = _step(row.get("trainer/global_step", row.get("_step", i)))
        step = step if step is not None else i
        for k, v in row.items():
            if k.startswith("_") or k == "trainer/global_step":
                continue
            if _num(v) is not None:
                wb_scalars.setdefault(k, []).append((step, float(v)))
            elif media and isinstance(v, dict) and v.get("_type") == "image-file":
                path = _image(files, v.get("path"), data, f"W&B image {k!r}")
                if path is not None:
                    data.images.setdefault(k, []).append((step, path))
            elif media and isinstance(v, dict) and v.get("_type") == "table-file":
                path = _resolve(files, v.get("path"), data, f"W&B table {k!r}")
                t = _json(path, data, f"W&B table {k!r}") if path is not None and path.exists() else None
                table = (
                    {"step": step, "columns": t.get("columns", []), "rows": t.get("data", [])}
                    if isinstance(t, dict)
                    else None
                )
                if _valid_table(table):
                    data.tables[k] = table
                elif t is not None:
                    data.skipped.append(f"W&B table {k!r}: not columns and rows (lists)")
    for k, vals in wb_scalars.items():  # Lightning's own metrics (val_acc, ...) live only in W&B
        data.scalars.setdefault(k, vals)
    for k, v in summary.items():
        if not k.startswith("_") and (_num(v) is not None or isinstance(v, str)):
            data.summary.setdefault(k, v)
    data.config.update({k: v for k, v in config.items() if not isinstance(v, dict)})


def load_run(run_dir: str | Path) -> RunData:
    """Read everything under ``run_dir`` (see the module docstring for what is accepted).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_nas.report import load_run, locate
        >>> from lightning_nas.tracking import Tracker
        >>> run = Path(tempfile.mkdtemp())
        >>> Tracker(files_dir=run / "nas_files").log_scalars({"val_acc": 0.9}, step=0)
        >>> data = load_run(run)
        >>> data.scalars["val_acc"]
        [(0, 0.9)]
    """
    sink, wb = locate(run_dir)
    if wb is not None:
        name = wb.name
    else:
        assert sink is not None  # locate() finds one of the two
        name = sink.parent.name if sink.name == "nas_files" else sink.name
        name = sink.parent.parent.name if name == "files" else name
    data = RunData(name=name, source=str(wb or sink))
    if sink is not None:
        _read_sink(sink, data)
    if wb is not None:
        _read_wandb(wb, data, media=sink is None)
    return data
