"""Shared by the benchmark scripts: a markdown table, machine facts, and BENCHMARKS.md assembly.

Each script writes its own section to ``benchmarks/results/<name>.md`` with ``write_section``; the
sections are then concatenated (in file-name order) into ``BENCHMARKS.md`` at the repository root.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, command: str, body: str) -> Path:
    """Write ``results/<name>.md`` and rebuild ``BENCHMARKS.md``; return the section's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"## {title}\n\nReproduce: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n")
    assemble()
    return path


def assemble() -> Path:
    parts = ["# Benchmarks\n\nEvery number below is measured side by side in one run of the named script "
             "(regenerate all with `make benchmarks`).\n"]
    parts += [p.read_text() for p in sorted(RESULTS.glob("*.md"))]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts))
    return out
