"""`lightning-nas report`: the HTML page from a W&B offline run or the file sink, checked in headless Chromium."""

import re
import shutil
import subprocess

import lightning as L
import numpy as np
import pytest

from lightning_nas.callbacks import ArchitectureView, AttributionMonitor, DecisionPaths, TrainingDynamics
from lightning_nas.cli import main
from lightning_nas.models import Classifier, DigitsCNN
from lightning_nas.report import build_report, load_run, locate
from lightning_nas.tracking import Tracker
from tests.helpers import fast_trainer


class _OtherNamespaces(L.Callback):
    """Logs through the real Tracker what the search/compression/distillation callbacks log, by their keys."""

    def on_train_epoch_end(self, trainer, pl_module):
        t = Tracker.from_trainer(trainer)
        e = trainer.current_epoch
        t.log_scalars(
            {
                "nas/block1/conv3": 0.3 + 0.1 * e,
                "nas/block1/skip": 0.7 - 0.1 * e,
                "prune/net.features.0/sparsity": 0.2 * e,
                "quant/net.features.0/sqnr_db": 30.0 + e,
                "distill/agreement": 0.8 + 0.05 * e,
            }
        )
        t.log_table("explain/sensitivity/table", ["layer", "acc_drop"], [["net.features.0", 0.01 * e]])


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    from lightning.pytorch.loggers import WandbLogger

    from lightning_nas.data import DigitsDataModule

    tmp = tmp_path_factory.mktemp("run")
    L.seed_everything(0)
    logger = WandbLogger(save_dir=str(tmp), offline=True)
    cbs = [
        _OtherNamespaces(),
        AttributionMonitor(n_samples=10),
        TrainingDynamics(every_n_steps=2, histogram_every_n_steps=4),
        DecisionPaths(n_samples=20),
        ArchitectureView(),
    ]
    trainer = fast_trainer(tmp, max_epochs=2, limit_train_batches=4, limit_val_batches=2, logger=logger, callbacks=cbs)
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=DigitsDataModule(seed=0))
    run_dir = logger.experiment.dir
    import wandb

    wandb.finish()
    from pathlib import Path

    return tmp, Path(run_dir).parent


def test_locate_accepts_save_dir_run_dir_and_files_dir(wandb_run):
    save_dir, run_dir = wandb_run
    sink = run_dir / "files" / "nas_files"
    assert locate(save_dir) == (sink, run_dir)
    assert locate(run_dir) == (sink, run_dir)
    assert locate(sink) == (sink, run_dir)


def test_report_has_every_section_the_run_has(wandb_run, tmp_path):
    save_dir, run_dir = wandb_run
    data = load_run(save_dir)
    assert "val_acc" in data.scalars  # logged by Lightning to W&B only: read from the offline run
    assert "explain/attribution/maps" in data.images and "explain/paths/overlap" in data.tables
    html = build_report(save_dir, tmp_path / "r.html").read_text()
    for sid in (
        "search",
        "compression",
        "distillation",
        "attribution",
        "paths",
        "architecture",
        "dynamics",
        "training",
        "summary",
    ):
        assert f'<section id="{sid}">' in html, sid
    assert html.count("data:image/png;base64,") >= 15 and "<table>" in html
    assert 'src="http' not in html and "<script" not in html  # self-contained, nothing fetched
    assert not data.skipped and "Not shown" not in html  # a run we wrote ourselves: nothing to skip


def test_report_from_file_sink_alone(wandb_run, tmp_path):
    _, run_dir = wandb_run
    sink = tmp_path / "sink"
    shutil.copytree(run_dir / "files" / "nas_files", sink)
    html = build_report(sink, tmp_path / "s.html").read_text()
    assert '<section id="dynamics">' in html and '<section id="search">' in html
    assert "val_acc" not in html  # Lightning's metrics were only in W&B


def test_cli_report_and_missing_run(wandb_run, tmp_path, capsys):
    save_dir, _ = wandb_run
    out = tmp_path / "cli.html"
    assert main(["report", str(save_dir), "-o", str(out), "--title", "my run"]) == 0
    assert "<title>my run</title>" in out.read_text() and str(out) in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(out)]) == 2
    assert "no lightning_nas files" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(wandb_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not found: install Debian's chromium (.ci/run does) to check the page in a browser")
    save_dir, _ = wandb_run
    page = build_report(save_dir, tmp_path / "report.html", title="Digits explain report")
    shot = tmp_path / "shot.png"
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "<title>Digits explain report</title>" in dom
    assert re.search(r"<h1>Digits explain report</h1>", dom)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1280)
    non_white = (img.mean(-1) < 0.92).mean()
    assert img.std() > 0.1 and non_white > 0.03, (img.std(), non_white)  # header, plots and images are drawn
    assert (np.abs(img - np.array([0x3F, 0x51, 0xB5]) / 255).sum(-1) < 0.05).mean() > 0.01  # the title bar


def test_report_from_a_plain_wandb_run_without_lightning_nas_files(tmp_path, digits):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=logger)
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)
    logger.experiment.log({"custom/picture": __import__("wandb").Image(np.eye(8) * 255)})
    import wandb

    wandb.finish()
    sink, run = locate(tmp_path)
    assert sink is None and run is not None
    data = load_run(tmp_path)
    assert len(data.scalars["val_acc"]) == 2 and "custom/picture" in data.images
    html = build_report(tmp_path, tmp_path / "plain.html").read_text()
    assert '<section id="training">' in html and "custom/picture" in html


@pytest.mark.slow
def test_demo_writes_the_report_next_to_the_model_card(tmp_path):
    from lightning_nas.demo import run_demo

    res = run_demo(max_epochs=1, out_dir=tmp_path / "demo")
    assert "explain" in [r["stage"] for r in res["rows"]]
    page = tmp_path / "demo" / "report.html"
    assert res["report"] == str(page) and (tmp_path / "demo" / "model_card.json").exists()
    html = page.read_text()
    assert '<section id="attribution">' in html and '<section id="dynamics">' in html
