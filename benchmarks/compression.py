"""Pruning and low-rank, measured side by side: the digits CNN and a residual CNN, batch 64, CPU.

Each variant starts from the same trained dense model and is fine-tuned for the same number of epochs
(the dense baseline too), then measured with ``lightning_nas.deploy.measure`` (params, MACs, median latency
in torch eager and in ONNX Runtime) and evaluated on the held-out test split:

* dense;
* ``StructuredPruning(0.5)``: half the channels physically removed (Torch-Pruning dependency graph),
  gradually (cubic schedule over the first 4 fine-tuning epochs);
* Lightning's own ``ModelPruning("l1_unstructured", 0.5)``: masks, for comparison (same dense compute);
* ``LowRankFactorization`` at three spectral-energy levels.

Run: ``python benchmarks/compression.py`` (a few minutes on an idle multi-core CPU).
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import table, write_section  # noqa: E402
from lightning_nas.callbacks import LowRankFactorization, StructuredPruning  # noqa: E402
from lightning_nas.data import DigitsDataModule  # noqa: E402
from lightning_nas.deploy import measure  # noqa: E402
from lightning_nas.models import Classifier, DigitsCNN  # noqa: E402

TRAIN_EPOCHS, FINETUNE_EPOCHS, WIDTH = 8, 8, 64


class ResidualCNN(nn.Module):
    """Stem, two residual blocks (conv-BN-ReLU-conv-BN + identity), a widening conv and a linear head."""

    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)) for _ in range(2))
        self.widen = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(block(h) + h)
        return self.head(self.widen(h).mean((2, 3)))


def _trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                     default_root_dir="/tmp/lightning_nas_bench", num_sanity_val_steps=0)


def _variants() -> dict[str, list]:
    from lightning.pytorch.callbacks import ModelPruning

    return {
        "dense": [],
        "StructuredPruning(0.5, cubic ep 0-3)": [StructuredPruning(amount=0.5, schedule="cubic", start_epoch=0,
                                                                   end_epoch=3)],
        "Lightning ModelPruning (l1 masks 0.5)": [
            ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=True,
                         apply_pruning=lambda epoch: epoch == 0, make_pruning_permanent=True, verbose=0)],
        "LowRank energy 0.9": [LowRankFactorization(energy=0.9, epoch=0)],
        "LowRank energy 0.7": [LowRankFactorization(energy=0.7, epoch=0)],
        "LowRank energy 0.5": [LowRankFactorization(energy=0.5, epoch=0)],
    }


def run_model(name: str, net: nn.Module, dm: DigitsDataModule, x: torch.Tensor) -> list[list]:
    L.seed_everything(0, verbose=False)
    base = Classifier(net, lr=3e-3)
    _trainer(TRAIN_EPOCHS, []).fit(base, datamodule=dm)
    rows, ref = [], None
    for variant, callbacks in _variants().items():
        L.seed_everything(1, verbose=False)
        module = copy.deepcopy(base)
        t0 = time.perf_counter()
        tr = _trainer(FINETUNE_EPOCHS, callbacks)
        tr.fit(module, datamodule=dm)
        acc = tr.test(module, datamodule=dm, verbose=False)[0]["test_acc"]
        m = measure(module.net.eval(), x, repeats=40, warmup=5)
        if ref is None:
            ref = (acc, m)
        zero = sum(int((p == 0).sum()) for p in module.net.parameters()) / max(m.params, 1)
        rows.append([name, variant, round(acc, 4), round(100 * (ref[0] - acc), 1), m.params,
                     round(m.params / ref[1].params, 3), round(zero, 2), m.macs, round(m.macs / ref[1].macs, 3),
                     round(m.latency_ms, 2), round(ref[1].latency_ms / m.latency_ms, 2),
                     None if m.onnx_latency_ms is None else round(m.onnx_latency_ms, 2),
                     None if not (m.onnx_latency_ms and ref[1].onnx_latency_ms)
                     else round(ref[1].onnx_latency_ms / m.onnx_latency_ms, 2)])
        print(f"{name:12s} {variant:38s} acc={acc:.4f} params={m.params} eager={m.latency_ms:.2f}ms "
              f"onnx={m.onnx_latency_ms}ms ({time.perf_counter() - t0:.0f}s)", flush=True)
    return rows


def main() -> None:
    t0 = time.perf_counter()
    dm = DigitsDataModule(batch_size=64, seed=0)
    x = dm.example_input(64)
    rows = run_model("digits CNN", DigitsCNN(WIDTH), dm, x) + run_model("residual CNN", ResidualCNN(WIDTH), dm, x)
    cols = ["model", "variant", "test acc", "drop (pt)", "params", "params ratio", "zero-weight frac", "MACs",
            "MACs ratio", "eager ms", "eager speedup", "ONNX RT ms", "ONNX speedup"]
    body = (f"Digits (sklearn, 8x8), batch 64, torch {torch.__version__} on {torch.get_num_threads()} threads. "
            f"Dense trained {TRAIN_EPOCHS} epochs, then every variant (dense included) fine-tuned "
            f"{FINETUNE_EPOCHS} epochs from that checkpoint. Width {WIDTH} (residual CNN: {WIDTH} channels in the "
            f"residual stream, {2 * WIDTH} in the last conv). Latency is the median of 40 timed calls; "
            f"speedups are dense latency / variant latency in the same run.\n\n" + table(cols, rows)
            + "\n\nMasks (Lightning's `ModelPruning`) zero half the weights but leave shapes, MACs and latency "
              "unchanged; `StructuredPruning` removes the channels. Low-rank layers are skipped where the "
              "chosen rank would not cut MACs by at least 10% (see the `lowrank/layers` table).\n"
            + f"\nTotal benchmark time: {time.perf_counter() - t0:.0f} s.")
    path = write_section("compression", "Pruning and low-rank factorization", "python benchmarks/compression.py",
                         body)
    print(body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
