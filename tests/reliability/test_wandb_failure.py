"""W&B trouble never stops training, and nothing logged is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN
from lightning_nas.tracking import FallbackWandbLogger, Tracker
from tests.helpers import LogEverything, fast_trainer


def _fit(tmp_path, logger):
    trainer = fast_trainer(
        tmp_path, logger=logger, callbacks=[LogEverything()], limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=DigitsDataModule())
    return trainer


_ONLINE_SCRIPT = """
import warnings
from pathlib import Path
import wandb
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier, DigitsCNN
from lightning_nas.tracking import FallbackWandbLogger, read_offline_run
from tests.helpers import fast_trainer
from tests.helpers import LogEverything
out = Path({out!r})
logger = FallbackWandbLogger(project="t", save_dir=str(out), offline=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer = fast_trainer(out, logger=logger, callbacks=[LogEverything()], limit_train_batches=2,
                           limit_val_batches=1)
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=DigitsDataModule())
assert any("W&B could not start" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert trainer.state.finished and trainer.current_epoch == 1
run_dir = Path(logger.experiment.dir).parent
wandb.finish()
history, summary, _ = read_offline_run(run_dir)
assert summary["test/final"] == 7 and any("val_acc" in row for row in history), summary
print("FALLBACK OK")
"""


@pytest.mark.slow
def test_online_without_network_falls_back_to_offline(tmp_path):
    """Own process: W&B caches its settings per process, so the broken online set-up must not leak."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        PYTHONPATH=str(root),
        WANDB_MODE="online",
        WANDB_API_KEY="x" * 40,
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_INIT_TIMEOUT="3",
    )  # nothing listens: no network
    proc = subprocess.run(
        [sys.executable, "-c", _ONLINE_SCRIPT.format(out=str(tmp_path))],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "FALLBACK OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_invalid_wandb_directory_keeps_training_and_files(tmp_path):
    import wandb

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    logger = FallbackWandbLogger(project="t", save_dir=str(blocker / "wandb"), offline=True)
    trainer = _fit(tmp_path, logger)
    files = Tracker.from_trainer(trainer).files_dir
    wandb.finish()
    assert trainer.state.finished
    assert json.loads((files / "summary.json").read_text())["test/final"] == 7
