import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_nas", "demo", "--max-epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wandb sync" in proc.stdout and "test_acc" in proc.stdout
    card = json.loads((out / "model_card.json").read_text())
    assert card["stages"] and card["measurements"]["params"] > 0
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_cli_rejects_bad_arguments():
    from lightning_nas.cli import main

    with pytest.raises(SystemExit, match="max-epochs"):
        main(["demo", "--max-epochs", "0"])
    with pytest.raises(SystemExit):
        main(["no-such-command"])
