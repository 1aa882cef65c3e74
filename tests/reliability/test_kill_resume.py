"""Kill-and-resume: a fit SIGKILLed mid-epoch and resumed from its last checkpoint ends exactly where an
uninterrupted fit ends (weights, and each callback's decisions: architecture, masks, int8 outputs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability.configs import CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def _run(config: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", "tests.reliability.resume_script", config, str(out), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_killed_and_resumed_fit_matches_uninterrupted(config, tmp_path):
    full = _run(config, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-4000:]
    killed = _run(config, tmp_path / "killed", "--kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert (tmp_path / "killed" / "ckpt" / "last.ckpt").exists() and not (tmp_path / "killed" / "result.pt").exists()
    resumed = _run(config, tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a = torch.load(tmp_path / "full" / "result.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "result.pt", weights_only=False)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{config}: {key} differs")
        else:
            assert a[key] == b[key], f"{config}: {key} differs: {a[key]!r} vs {b[key]!r}"
