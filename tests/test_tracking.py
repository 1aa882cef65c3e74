"""The tracking sink: W&B media read back from the offline run, CSV logger scalars, files always."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_nas.tracking import Tracker, read_offline_run, to_uint8_image
from tests.helpers import IMAGE, LogEverything, fast_trainer


def _fit(tmp_path, logger):
    trainer = fast_trainer(
        tmp_path, logger=logger, callbacks=[LogEverything()], limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(BoringModel())
    return trainer


def test_wandb_offline_run_records_every_kind(tmp_path):
    import wandb

    logger = WandbLogger(project="t", save_dir=str(tmp_path), offline=True)
    trainer = _fit(tmp_path, logger)
    files_dir = Tracker.from_trainer(trainer).files_dir
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    history, summary, _ = read_offline_run(tmp_path)
    by_key = {k: row[k] for row in history for k in row}
    assert by_key["test/scalar"] == 2.5
    hist = by_key["test/hist"]
    assert hist["_type"] == "histogram" and sum(hist["values"]) == 100 and len(hist["bins"]) == len(hist["values"]) + 1
    table = by_key["test/table"]
    assert table["_type"] == "table-file" and table["nrows"] == 2 and table["ncols"] == 2
    data = json.loads((run_dir / "files" / table["path"]).read_text())
    assert data["columns"] == ["layer", "value"] and data["data"] == [["conv1", 1.0], ["fc", 0.5]]
    image = by_key["test/image"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (8, 8)
    png = run_dir / "files" / image["path"]
    assert png.exists()
    import matplotlib.pyplot as plt

    pixels = plt.imread(png)
    assert pixels.max() > pixels.min(), "the logged image is all one colour"
    assert "test/series_table" in by_key  # wandb.plot.line_series is stored as a table
    assert summary["test/final"] == 7
    assert by_key["trainer/global_step"] == trainer.global_step
    # the file copy is in the run's files folder, so `wandb sync` uploads it too
    assert files_dir.is_relative_to(run_dir / "files") and (files_dir / "index.jsonl").exists()
    # reading a specific offline-run folder gives the same answer
    assert read_offline_run(run_dir)[1]["test/final"] == 7


def test_csv_logger_scalars_and_files(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = _fit(tmp_path, logger)
    logger.finalize("success")
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("test/scalar") == "2.5" for r in rows)
    files = Tracker.from_trainer(trainer).files_dir
    assert files == Path(logger.log_dir) / "nas_files"
    _assert_files(files)


def test_no_logger_writes_files_only(tmp_path):
    trainer = _fit(tmp_path, False)
    files = Tracker.from_trainer(trainer).files_dir
    assert files == tmp_path / "nas_files"
    _assert_files(files)


def _assert_files(files: Path) -> None:
    scalars = [json.loads(line) for line in (files / "scalars.jsonl").read_text().splitlines()]
    assert scalars[0]["test/scalar"] == 2.5
    hist = json.loads((files / "histograms/test_hist.jsonl").read_text().splitlines()[0])
    assert sum(hist["counts"]) == 100 and hist["max"] == 99
    table = json.loads((files / "tables/test_table.jsonl").read_text().splitlines()[0])
    assert table["columns"] == ["layer", "value"] and table["rows"][1] == ["fc", 0.5]
    pngs = list((files / "images").glob("test_image-*.png"))
    assert len(pngs) == 1
    series = json.loads((files / "series/test_series.json").read_text())
    assert series["ys"]["b"] == [0.9, 0.8, 0.7]
    kinds = {json.loads(line)["kind"] for line in (files / "index.jsonl").read_text().splitlines()}
    assert kinds == {"scalar", "histogram", "table", "image", "series"}
    assert json.loads((files / "summary.json").read_text())["test/final"] == 7


def test_to_uint8_image_scales_floats_and_reads_figures():
    assert to_uint8_image(IMAGE).max() == 255 and to_uint8_image(IMAGE).min() == 0
    assert to_uint8_image(torch.zeros(1, 4, 4) - 3).shape == (4, 4)
    chw = to_uint8_image(torch.rand(3, 5, 6))
    assert chw.shape == (5, 6, 3) and chw.dtype == np.uint8
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    arr = to_uint8_image(fig)
    assert arr.ndim == 3 and arr.shape[-1] == 3 and arr.std() > 0
    with pytest.raises(ValueError, match="HxW"):
        to_uint8_image(np.zeros((2, 2, 2, 2)))


def test_table_row_length_checked(tmp_path):
    t = Tracker([], files_dir=tmp_path)
    with pytest.raises(ValueError, match="2 columns"):
        t.log_table("bad", ["a", "b"], [[1, 2, 3]])


def test_disabled_tracker_writes_nothing(tmp_path):
    t = Tracker([], files_dir=tmp_path / "x", enabled=False)
    t.log_scalars({"a": 1.0})
    t.log_image("i", IMAGE)
    assert not (tmp_path / "x").exists()


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(TypeError, match="Logger"):
        Tracker(loggers=["not a logger"])
    with pytest.raises(TypeError, match="lightning.Trainer"):
        Tracker.from_trainer(object())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_offline_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no W&B offline run"):
        read_offline_run(tmp_path)
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="W&B header"):
        read_offline_run(bad)
