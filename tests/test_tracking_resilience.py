"""No logging problem stops a fit (issue 15, item 7): W&B media are built inside the guarded region, and NaN
stays a float (it used to become the string "nan", which wandb.Table refused in a float column)."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import WandbLogger

from lightning_nas.tracking import FallbackWandbLogger, Tracker
from tests.helpers import fast_trainer


class _LogOddValues(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        t = Tracker.from_trainer(trainer)
        t.log_table("odd/table", ["layer", "value"], [["a", 0.5], ["b", float("nan")], ["c", float("inf")]])
        t.log_line_series("odd/series", [0, 1], {"y": [float("nan"), 1.0]})
        t.log_summary({"odd/final": float("nan")})
        t.log_scalars({"odd/after": 1.0})  # reached: nothing above stopped the fit


@pytest.mark.parametrize("logger_cls", [WandbLogger, FallbackWandbLogger])
def test_nan_in_a_float_column_does_not_stop_the_fit(tmp_path, logger_cls):
    import wandb

    logger = logger_cls(project="t", save_dir=str(tmp_path), offline=True)
    trainer = fast_trainer(
        tmp_path, logger=logger, callbacks=[_LogOddValues()], limit_train_batches=2, limit_val_batches=1, max_epochs=2
    )
    trainer.fit(BoringModel())
    assert trainer.state.finished and trainer.current_epoch == 2
    files = Tracker.from_trainer(trainer).files_dir
    wandb.finish()
    rows = json.loads((files / "tables" / "odd_table.jsonl").read_text().splitlines()[-1])["rows"]
    assert rows[0] == ["a", 0.5] and math.isnan(rows[1][1]) and rows[2][1] == math.inf  # floats, not "nan"
    assert math.isnan(json.loads((files / "summary.json").read_text())["odd/final"])
    assert any("odd/after" in line for line in (files / "scalars.jsonl").read_text().splitlines())


def test_a_failing_media_constructor_is_a_warning(tmp_path, monkeypatch):
    """Whatever W&B raises while building media (a bug, a new version's stricter checks), the fit goes on."""
    import wandb

    def boom(*a, **k):
        raise TypeError("Data row contained incompatible types")

    for name in ("Table", "Histogram", "Image"):
        monkeypatch.setattr(wandb, name, boom)
    monkeypatch.setattr(wandb.plot, "line_series", boom)

    class LogEverything(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            t = Tracker.from_trainer(trainer)
            t.log_table("m/table", ["a"], [[1.0]])
            t.log_histogram("m/hist", [1.0, 2.0, 3.0])
            t.log_image("m/image", [[0.0, 1.0], [1.0, 0.0]])
            t.log_line_series("m/series", [0, 1], {"y": [1.0, 2.0]})

    logger = WandbLogger(project="t", save_dir=str(tmp_path), offline=True)
    trainer = fast_trainer(
        tmp_path, logger=logger, callbacks=[LogEverything()], limit_train_batches=2, limit_val_batches=1
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BoringModel())
    assert trainer.state.finished
    assert any("logging to a logger failed" in str(w.message) for w in caught)
    files = Tracker.from_trainer(trainer).files_dir
    monkeypatch.undo()
    wandb.finish()
    assert {"m_table.jsonl"} <= {p.name for p in (files / "tables").iterdir()}
    assert list((files / "images").glob("m_image-*.png"))
