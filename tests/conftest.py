"""Fixtures of the test suite; settings shared with the docstring examples are in the root ``conftest.py``."""

import os

import pytest

# W&B offline, torch's global flags and the check that no test writes into the repository: ../conftest.py
# Hypothesis/Schemathesis keep caches under ./.hypothesis by default: no test writes into the repository
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(__import__("tempfile").gettempdir(), "lightning-nas-hypothesis")
)


@pytest.fixture
def digits():
    from lightning_nas.data import DigitsDataModule

    return DigitsDataModule(batch_size=64, seed=0)


@pytest.fixture(autouse=True)
def _finish_open_wandb_run():
    """A test that leaves a W&B run open makes the next WandbLogger reuse it (and write into the wrong folder)."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
