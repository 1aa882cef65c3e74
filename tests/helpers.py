"""Helpers shared by the tests (trainers, small models, servers, trained fixtures); no tests here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import lightning as L
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from lightning_nas import space
from lightning_nas.data import DigitsDataModule
from lightning_nas.models import DigitsCNN, train_plain
from lightning_nas.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent


IMAGE = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)


def conv_bn_relu(c, k):
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2), nn.BatchNorm2d(c), nn.ReLU())


MULTITRIAL_BUILD = """
import os, time
import socket
from pathlib import Path
from lightning_nas.models import Classifier, DigitsCNN

def build(trial):
    width = trial.choice("width", [4, 8])
    lr = trial.loguniform("lr", 1e-3, 3e-2)
    trial.set_user_attr("pid", os.getpid())
    barrier = os.environ.get("LNAS_TEST_BARRIER")  # wait until every worker is up, so that all take part
    if barrier:
        Path(barrier, str(os.getpid())).touch()
        t0 = time.time()
        while len(os.listdir(barrier)) < 2 and time.time() - t0 < 120:
            time.sleep(0.05)
    marker = os.environ.get("LNAS_TEST_MARKER")
    if marker:
        Path(marker).write_text(str(trial.number))
    time.sleep(float(os.environ.get("LNAS_TEST_SLEEP", "0")))
    return Classifier(DigitsCNN(width), lr=lr)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_trainer(tmp_path, **kwargs):
    """A quiet CPU trainer for tests."""
    import lightning as L

    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(tmp_path),
    )
    opts.update(kwargs)
    return L.Trainer(**opts)


class LogEverything(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        t = Tracker.from_trainer(trainer)
        t.log_scalars({"test/scalar": 2.5})
        t.log_histogram("test/hist", torch.arange(100, dtype=torch.float32))
        t.log_table("test/table", ["layer", "value"], [["conv1", 1.0], ["fc", 0.5]])
        t.log_image("test/image", IMAGE, caption="ramp")
        t.log_line_series("test/series", [0, 1, 2], {"a": [0.1, 0.2, 0.3], "b": [0.9, 0.8, 0.7]})
        t.log_summary({"test/final": 7})


class SmallSpace(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.b1 = space.LayerChoice(
            {"conv3": conv_bn_relu(c, 3), "conv1": conv_bn_relu(c, 1), "skip": nn.Identity()}, label="b1"
        )
        self.b2 = space.LayerChoice({"conv3": conv_bn_relu(c, 3), "skip": nn.Identity()}, label="b2")
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))).mean((2, 3)))


def multitrial_config(tmp_path: Path, n_trials: int, **extra) -> Path:
    (tmp_path / "build.py").write_text(MULTITRIAL_BUILD)
    lines = [
        f"build: {tmp_path / 'build.py'}:build",
        "datamodule: {class_path: lightning_nas.data.DigitsDataModule, init_args: {batch_size: 64}}",
        "objectives: {val_acc: maximize}",
        f"n_trials: {n_trials}",
        "strategy: random",
        "seed: 0",
        "trainer: {max_epochs: 1, limit_train_batches: 3, limit_val_batches: 2}",
        f"out_dir: {tmp_path / 'out'}",
        *[f"{k}: {v}" for k, v in extra.items()],
    ]
    path = tmp_path / "search.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class SpaceNet(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.b1 = space.LayerChoice(
            {"conv3": nn.Conv2d(c, c, 3, padding=1), "conv1": nn.Conv2d(c, c, 1), "skip": nn.Identity()}, label="b1"
        )
        self.b2 = space.LayerChoice([nn.Conv2d(c, c, 3, padding=1), nn.Identity()], label="b2")
        self.inp = space.InputChoice(2, label="inp")
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.inp([self.b2(self.b1(s)), s])
        return self.head(y.mean((2, 3)))


def start_server(bundle_dir, *args: str) -> tuple[subprocess.Popen, httpx.Client]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_nas", "serve", str(bundle_dir), "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if client.get("/health").status_code == 200:
                return proc, client
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


def stop_server(proc: subprocess.Popen, client: httpx.Client) -> None:
    client.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def trained_digits_cnn(epochs: int = 6, seed: int = 0) -> tuple[torch.nn.Module, DigitsDataModule]:
    """A DigitsCNN(16) trained for a few epochs with a plain loop (~1 s), in eval mode."""
    torch.manual_seed(seed)
    dm = DigitsDataModule(seed=seed)
    net = DigitsCNN(16)
    return train_plain(net, *dm.split("train").tensors, epochs=epochs), dm


def brighter(x: np.ndarray, delta: float = 0.2) -> np.ndarray:
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


def rotated(x: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    return np.clip(ndimage.rotate(x, degrees, axes=(2, 3), reshape=False, order=1), 0.0, 1.0).astype(np.float32)


def clean_pool(dm: DigitsDataModule) -> np.ndarray:
    """Validation + test images: clean digits the profile (built on train) never saw."""
    return torch.cat([dm.split("val").tensors[0], dm.split("test").tensors[0]]).numpy()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file the sink wrote (the file closed again)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
