"""Shared by the benchmark scripts: a markdown table, machine facts, provenance, and BENCHMARKS.md assembly.

Each script writes its own section to ``benchmarks/results/<name>.md`` with ``write_section``; the
sections are then concatenated (in file-name order) into ``BENCHMARKS.md`` at the repository root.
Every section starts with its provenance: the exact command line and the value of every argument, the git
commit (and whether the code had uncommitted changes), and the versions of torch, Lightning, Optuna and
ONNX Runtime. A ``--quick`` run (a smoke test at a smaller scale) writes to ``benchmarks/results/quick/``,
which git ignores, and leaves the published sections and BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
QUICK = RESULTS / "quick"  # git-ignored: smoke runs never replace published numbers
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
# distributions whose versions each section records (import name -> how the section names it)
VERSIONS = {
    "torch": "torch",
    "lightning": "Lightning",
    "optuna": "Optuna",
    "onnxruntime": "ONNX Runtime",
    "lightning-nas": "lightning-nas",
}


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
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as typed from the repository root (``python benchmarks/x.py --a 1``)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *argv[1:]])


def git_state() -> str:
    """``<sha>`` of HEAD, plus the code files with uncommitted changes (results files and BENCHMARKS.md, which the
    benchmarks themselves write, do not count)."""

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=30, check=True
        ).stdout.rstrip("\n")

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results", ":!BENCHMARKS.md"
        ).splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if not dirty:
        return sha
    files = [line[3:] for line in dirty]
    return f"{sha} with uncommitted changes to {', '.join(files[:5])}" + (" ..." if len(files) > 5 else "")


def versions() -> str:
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{label} {version(dist)}" for dist, label in VERSIONS.items())


def provenance(args: argparse.Namespace | None = None, argv: Sequence[str] | None = None) -> str:
    """The header of a results section: what exactly produced it, where and with which code."""
    arguments = ", ".join(f"`{k}={v!r}`" for k, v in sorted(vars(args).items())) if args is not None else "none"
    return "  \n".join(
        [
            f"Reproduce: `{command_line(argv)}`",
            f"Arguments: {arguments}",
            f"Code: git {git_state()}; recorded {datetime.date.today().isoformat()}",
            f"Versions: {versions()}",
            f"Machine: {machine()}",
        ]
    )


def write_section(
    name: str, title: str, body: str, args: argparse.Namespace | None = None, quick: bool | None = None
) -> Path:
    """Write ``results/<name>.md`` (provenance, then ``body``) and rebuild ``BENCHMARKS.md``; return its path.

    ``args`` are the script's parsed arguments, recorded in full. A quick run (``quick``, by default
    ``args.quick``) writes ``results/quick/<name>.md`` instead and leaves BENCHMARKS.md as it is."""
    if quick is None:
        quick = bool(getattr(args, "quick", False))
    folder = QUICK if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    note = "\n\n**A `--quick` smoke run at a smaller scale: not a published result.**" if quick else ""
    path.write_text(f"## {title}\n\n{provenance(args)}{note}\n\n{body.strip()}\n")
    if quick:
        print(f"quick run: wrote {path}; the published results and BENCHMARKS.md are unchanged")
    else:
        assemble()
    return path


def assemble() -> Path:
    parts = [
        "# Benchmarks\n\nEvery number below is measured side by side in one run of the named script "
        "(regenerate all with `make benchmarks`); each section names the command line, arguments, git commit and "
        "library versions that produced it.\n"
    ]
    parts += [p.read_text() for p in sorted(RESULTS.glob("*.md"))]
    BENCHMARKS_MD.write_text("\n".join(parts))
    return BENCHMARKS_MD
