"""mkdocs hook: the pictures the benchmark scripts write under ``benchmarks/results/`` are served with the site at
the same relative path, so that ``BENCHMARKS.md`` (included in ``docs/benchmarks.md``) shows them and its links
resolve under ``--strict``. Nothing is copied into ``docs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config: Any) -> Files:
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(
            File(
                f"benchmarks/results/{png.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
