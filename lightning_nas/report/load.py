"""Read a run for the report: the tracking sink's files and, when there is one, the W&B offline run.

Accepted ``run_dir``: a file-sink folder (``index.jsonl``/``scalars.jsonl``), a folder holding one
(``<log_dir>/nas_files``), a W&B run folder (``offline-run-*``, its ``files/nas_files`` is used), or a
W&B save dir / any folder above them (the newest run found below it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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

    def keys(self) -> set[str]:
        return set(self.scalars) | set(self.tables) | set(self.images) | set(self.histograms) | set(self.series)


def _is_sink(p: Path) -> bool:
    return p.is_dir() and ((p / "index.jsonl").exists() or (p / "scalars.jsonl").exists())


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda q: q.stat().st_mtime) if paths else None


def locate(run_dir: str | Path) -> tuple[Path | None, Path | None]:
    """``(sink_dir, wandb_run_dir)`` for ``run_dir``; either may be ``None``, not both."""
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
        raise FileNotFoundError(f"report: no lightning_nas files (index.jsonl) nor W&B run (run-*.wandb) under "
                                f"{str(p)!r}; pass a W&B run or save dir, or a Tracker.files_dir")
    return sink, wb


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line still being written
                    continue
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _read_sink(sink: Path, data: RunData) -> None:
    for rec in _jsonl(sink / "scalars.jsonl"):
        step = int(rec.get("step", 0))
        for k, v in rec.items():
            if k != "step" and _num(v) is not None:
                data.scalars.setdefault(k, []).append((step, float(v)))
    index = _jsonl(sink / "index.jsonl")
    files = {(e["kind"], e["key"]): e["file"] for e in index if e.get("file")}
    for e in index:
        if e["kind"] == "image" and (sink / e["file"]).exists():
            data.images.setdefault(e["key"], []).append((int(e["step"]), sink / e["file"]))
    for (kind, key), rel in files.items():
        path = sink / rel
        if kind == "table":
            recs = _jsonl(path)
            if recs:
                data.tables[key] = recs[-1]
        elif kind == "histogram":
            data.histograms[key] = _jsonl(path)
        elif kind == "series" and path.exists():
            data.series[key] = json.loads(path.read_text())
    if (sink / "summary.json").exists():
        data.summary.update(json.loads((sink / "summary.json").read_text()))


def _read_wandb(run: Path, data: RunData, media: bool) -> None:
    from lightning_nas.tracking import read_offline_run

    history, summary, config = read_offline_run(run, timeout=0.5)
    files = run / "files"
    wb_scalars: dict[str, list[tuple[int, float]]] = {}
    for i, row in enumerate(history):
        step = row.get("trainer/global_step", row.get("_step", i))
        step = int(step) if _num(step) is not None else i
        for k, v in row.items():
            if k.startswith("_") or k == "trainer/global_step":
                continue
            if _num(v) is not None:
                wb_scalars.setdefault(k, []).append((step, float(v)))
            elif media and isinstance(v, dict) and v.get("_type") == "image-file" and (files / v["path"]).exists():
                data.images.setdefault(k, []).append((step, files / v["path"]))
            elif media and isinstance(v, dict) and v.get("_type") == "table-file" and (files / v["path"]).exists():
                t = json.loads((files / v["path"]).read_text())
                data.tables[k] = {"step": step, "columns": t.get("columns", []), "rows": t.get("data", [])}
    for k, vals in wb_scalars.items():  # Lightning's own metrics (val_acc, ...) live only in W&B
        data.scalars.setdefault(k, vals)
    for k, v in summary.items():
        if not k.startswith("_") and (_num(v) is not None or isinstance(v, str)):
            data.summary.setdefault(k, v)
    data.config.update({k: v for k, v in config.items() if not isinstance(v, dict)})


def load_run(run_dir: str | Path) -> RunData:
    """Read everything under ``run_dir`` (see the module docstring for what is accepted)."""
    sink, wb = locate(run_dir)
    if wb is not None:
        name = wb.name
    else:
        name = sink.parent.name if sink.name == "nas_files" else sink.name
        name = sink.parent.parent.name if name == "files" else name
    data = RunData(name=name, source=str(wb or sink))
    if sink is not None:
        _read_sink(sink, data)
    if wb is not None:
        _read_wandb(wb, data, media=sink is None)
    return data
