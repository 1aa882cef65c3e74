import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# Hypothesis/Schemathesis keep caches under ./.hypothesis by default: no test writes into the repository
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(__import__("tempfile").gettempdir(), "lightning-nas-hypothesis")
)


@pytest.fixture
def digits():
    from lightning_nas.data import DigitsDataModule

    return DigitsDataModule(batch_size=64, seed=0)


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


@pytest.fixture(autouse=True)
def _finish_open_wandb_run():
    """A test that leaves a W&B run open makes the next WandbLogger reuse it (and write into the wrong folder)."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


_REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
# written by the tools around the tests, not by the tests: never reported
_TOOL_PATHS = (".venv", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache")


def _repo_entries() -> set[str] | None:
    """``git status`` lines of the repository, ignored paths included (what a test could have written), or None
    outside a git checkout."""
    import subprocess

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
        path = line[3:]
        parts = path.rstrip("/").split("/")
        if parts[0] in _TOOL_PATHS or "__pycache__" in parts or parts[0].endswith(".egg-info"):
            continue
        entries.add(line)
    return entries


@pytest.fixture(scope="session", autouse=True)
def _tests_leave_the_repository_as_they_found_it():
    """No test writes into the repository (run output, data downloads, caches): files that appeared or changed
    under it during the session fail the run. Tests write under ``tmp_path``."""
    before = _repo_entries()
    yield
    after = _repo_entries()
    if before is not None and after is not None and after - before:
        pytest.fail(
            "the tests left files in the repository (write them under tmp_path):\n  "
            + "\n  ".join(sorted(after - before)),
            pytrace=False,
        )
