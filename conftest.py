"""Run settings for the docstring examples (``pytest --doctest-modules lightning_nas``, part of ``make test``).

The suite's own settings live in ``tests/conftest.py``; this file applies to the doctests: W&B offline, and the
same rule as the tests: no example writes into the repository (they write under ``tempfile`` folders).
"""

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

_REPO = Path(__file__).resolve().parent
# written by the tools around the tests, not by the examples: never reported
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
def _doctests_leave_the_repository_as_they_found_it(request):
    """Files that appeared or changed under the repository while docstring examples ran fail the run (the test
    suite has the same check in ``tests/conftest.py``)."""
    if not any(isinstance(item, pytest.DoctestItem) for item in request.session.items):
        yield
        return
    before = _repo_entries()
    yield
    after = _repo_entries()
    if before is not None and after is not None and after - before:
        pytest.fail(
            "the docstring examples left files in the repository (write them under a tempfile folder):\n  "
            + "\n  ".join(sorted(after - before)),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _isolate_global_torch_flags():
    """An example that changes torch's global flags (deterministic algorithms, quantized engine) restores them."""
    import torch

    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    engine = torch.backends.quantized.engine
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.backends.quantized.engine = engine
