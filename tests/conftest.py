import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


@pytest.fixture
def digits():
    from lightning_nas.data import DigitsDataModule

    return DigitsDataModule(batch_size=64, seed=0)


def fast_trainer(tmp_path, **kwargs):
    """A quiet CPU trainer for tests."""
    import lightning as L

    opts = dict(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, logger=False,
                default_root_dir=str(tmp_path))
    opts.update(kwargs)
    return L.Trainer(**opts)
