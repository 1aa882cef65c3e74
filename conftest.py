"""Run settings shared by the test suite and the docstring examples (``pytest --doctest-modules lightning_nas``):
W&B offline, torch's global flags restored after each test, and no test or example writes into the repository
(they write under ``tmp_path`` / ``tempfile`` folders). Fixtures of the suite alone live in ``tests/conftest.py``.
"""

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

_REPO = Path(__file__).resolve().parent
# written by the tools around the tests, not by the tests: never reported
_TOOL_PATHS = (".venv", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "site")


def _repo_entries() -> set[str] | None:
    """``git status`` lines of the repository, ignored paths included, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--ignored", "--untracked-files=normal"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    entries = set()
    for line in out.splitlines():
        parts = line[3:].rstrip("/").split("/")
        if parts[0] in _TOOL_PATHS or "__pycache__" in parts or parts[0].endswith(".egg-info"):
            continue
        entries.add(line)
    return entries


@pytest.fixture(scope="session", autouse=True)
def _session_leaves_the_repository_as_it_found_it():
    """Files that appeared or changed under the repository during the session (run output, data downloads,
    caches) fail the run."""
    before = _repo_entries()
    yield
    after = _repo_entries()
    if before is not None and after is not None and after - before:
        pytest.fail(
            "the tests left files in the repository (write them under tmp_path or a tempfile folder):\n  "
            + "\n  ".join(sorted(after - before)),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _isolate_global_torch_flags():
    """``Trainer(deterministic=True)`` turns on ``torch.use_deterministic_algorithms`` for the whole process and
    never turns it off; restore it (and the quantized engine) after each test so tests don't leak into others."""
    import torch

    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    engine = torch.backends.quantized.engine
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.backends.quantized.engine = engine
