"""The demo's console: one line per stage (a bar for the running fit on a terminal), the summary table, and the
quiet mode that hides Lightning's, W&B's and the stages' own output unless ``verbose``."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any, TextIO

import lightning as L
from typing_extensions import override


class Console:
    """The demo's own lines, written to ``stream`` (the real stdout, even while the stages' output is hidden).

    One line per stage, written when the stage ends; on a terminal the line is shown from the start and shows
    the epochs of the running fit as a bar."""

    def __init__(self, stream: TextIO, verbose: bool = False) -> None:
        self.stream, self.verbose = stream, verbose
        self.live = not verbose and stream.isatty()
        self.prefix, self.t0 = "", 0.0

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def start(self, i: int, n: int, name: str) -> None:
        self.prefix, self.t0 = f"[{i}/{n}] {name:<10} ", time.perf_counter()
        if self.verbose:
            self.write(self.prefix + "...\n")
        elif self.live:
            self.write(self.prefix)

    def progress(self, done: float, text: str) -> None:
        if self.live:
            k = round(20 * min(max(done, 0.0), 1.0))
            self.write(f"\r\033[K{self.prefix}[{'#' * k}{'.' * (20 - k)}] {text}")

    def end(self, summary: str | None) -> None:
        line = f"{self.prefix}{summary or 'done'} ({time.perf_counter() - self.t0:.1f} s)"
        self.write(("\r\033[K" if self.live else "") + line + "\n")


class EpochProgress(L.Callback):
    """Feeds the console's bar: epoch and batch of the running fit."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = trainer.num_training_batches
        n = int(n) if 0 < n < float("inf") else batch_idx + 1
        epochs = max(trainer.max_epochs or 1, 1)
        self.console.progress(
            (trainer.current_epoch + min(batch_idx + 1, n) / n) / epochs, f"epoch {trainer.current_epoch + 1}/{epochs}"
        )


@contextmanager
def quiet_logs(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: Lightning's and Optuna's INFO lines, Python warnings, W&B's console output and anything
    printed go nowhere. If the block fails, what was hidden is written to stderr before the error."""
    if verbose:
        yield
        return
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric", "optuna")
    levels = {name: logging.getLogger(name).level for name in names}
    silent = os.environ.get("WANDB_SILENT")
    hidden = io.StringIO()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ["WANDB_SILENT"] = "true"
        with warnings.catch_warnings(), redirect_stdout(hidden), redirect_stderr(hidden):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(hidden.getvalue()[-20_000:])
        raise
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if silent is None:
            os.environ.pop("WANDB_SILENT", None)
        else:
            os.environ["WANDB_SILENT"] = silent


def print_table(rows: list[dict[str, Any]], stream: TextIO | None = None) -> None:
    """The summary table: one row per stage; ``attr_rho`` is the Spearman correlation of the stage model's
    attributions with the float model's (after the explain stage), ``-`` where not measured."""
    cols = ["stage", "test_acc", "params", "size_bytes", "macs", "latency_ms", "onnx_latency_ms", "attr_rho"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for i, r in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)), file=stream)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=stream)
