"""Text (issue 18): the demo's pipeline on WordNet 3.0 noun glosses -> 26 lexicographer classes, stage by stage, and
the one-shot search's regret over a space small enough to train exhaustively.

Run: ``python benchmarks/text.py [--max-samples 30000] [--epochs 3] [--quick]``. Writes
``benchmarks/results/text.md`` (``--quick``: ``benchmarks/results/quick/text.md``, a smoke run). Needs Debian's
``wordnet-base`` (``apt-get install wordnet-base``).

1. ``lightning-nas demo --task text`` as a function (``run_demo``) on ``--max-samples`` synsets: accuracy,
   parameters, serialized size, torch and ONNX Runtime latency (batch 64) and attribution drift after each stage.
2. Regret: the search's decision is the first conv's width (``TEXT_KERNELS``). Each width is trained from scratch as
   a plain ``TextCNN`` for ``--epochs`` epochs (same data, seed, optimizer); regret is the best width's validation
   accuracy minus that of the width DARTS chose (test accuracy beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks._report import table, write_section  # noqa: E402
from lightning_nas import _demo_tasks as T  # noqa: E402
from lightning_nas import demo as D  # noqa: E402
from lightning_nas.models import Classifier, TextCNN  # noqa: E402


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its children that have ended (W&B's service)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def pipeline(max_samples: int | None, epochs: int, seed: int) -> tuple[dict, float, float]:
    """The text demo on ``max_samples`` synsets; returns its result, wall seconds and CPU seconds."""
    task = dataclasses.replace(T.TEXT, datamodule=lambda s: T._text_datamodule(s, max_samples))
    D.TASKS["text"] = task
    t0, c0 = time.perf_counter(), _cpu_s()
    with tempfile.TemporaryDirectory() as d:
        res = D.run_demo(max_epochs=epochs, out_dir=Path(d) / "demo", seed=seed, task="text")
    return res, time.perf_counter() - t0, _cpu_s() - c0


def exhaustive(max_samples: int | None, epochs: int, seed: int) -> tuple[list[list], dict]:
    """Each kernel width of the search space trained from scratch: ``[width, val_acc, test_acc, params]``, and
    facts of the data (validation size, vocabulary size)."""
    dm = T._text_datamodule(seed, max_samples)
    dm.setup()
    rows = []
    for k in T.TEXT_KERNELS:
        L.seed_everything(seed, workers=True, verbose=False)
        module = Classifier(TextCNN(dm.vocab_size, dm.num_classes, T.TEXT_EMBED, T.TEXT_CHANNELS, k), lr=T.TEXT.lr)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
        )
        trainer.fit(module, datamodule=dm)
        val = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_acc"]
        test = trainer.test(module, datamodule=dm, verbose=False)[0]["test_acc"]
        rows.append([f"k{k}", val, test, sum(p.numel() for p in module.parameters())])
        print(f"k{k}: val {val:.4f} test {test:.4f}", flush=True)
    return rows, {"n_val": len(dm.split("val")), "vocab": dm.vocab_size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-samples", type=int, default=T.TEXT_MAX_SAMPLES, help="synsets read (0: all 82,115)")
    ap.add_argument("--epochs", type=int, default=T.TEXT.max_epochs, help="epochs per training stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4,000 synsets, 1 epoch")
    args = ap.parse_args()
    if args.quick:
        args.max_samples, args.epochs = 4000, 1
    torch.set_num_threads(args.threads)
    max_samples = args.max_samples or None
    t0 = time.perf_counter()
    res, wall, cpu = pipeline(max_samples, args.epochs, args.seed)
    rows = res["rows"]
    base = next(r for r in rows if r["stage"] == "explain")  # the trained float model
    stage_rows = [
        [
            r["stage"],
            f"{100 * r['test_acc']:.2f}",
            r["params"],
            f"{r['size_bytes'] / 1024:.0f}",
            f"{base['size_bytes'] / r['size_bytes']:.2f}x",
            f"{r['latency_ms']:.2f}",
            "-" if r["onnx_latency_ms"] is None else f"{r['onnx_latency_ms']:.2f}",
            "-" if r["attr_rho"] is None else f"{r['attr_rho']:.2f}",
        ]
        for r in rows
    ]
    picked = res["arch"]["conv1"]
    ex, facts = exhaustive(max_samples, args.epochs, args.seed)
    best_acc = max(r[1] for r in ex)
    se = 100 * (best_acc * (1 - best_acc) / facts["n_val"]) ** 0.5
    quant = next(r for r in rows if r["stage"] == "quantize")
    emb_share = facts["vocab"] * (T.TEXT_EMBED // 2) / quant["params"]
    best = max(ex, key=lambda r: r[1])
    mine = next(r for r in ex if r[0] == picked)
    regret = 100 * (best[1] - mine[1])
    ex_rows = [
        [r[0] + (" (DARTS)" if r[0] == picked else ""), f"{100 * r[1]:.2f}", f"{100 * r[2]:.2f}", r[3]] for r in ex
    ]
    n = "all 82,115" if max_samples is None else f"{max_samples:,}"
    body = [
        f"WordNet 3.0 noun glosses ({n} synsets, stratified 80/10/10 split, seed {args.seed}; words of the gloss, "
        f"32 tokens at most, vocabulary from the training split with min frequency 3) -> 26 lexicographer classes "
        f"(chance: 1/26 = 3.8%; the largest class, noun.artifact, is 14%). Model: `TextCNN` (embedding "
        f"{T.TEXT_EMBED}, two Conv1d blocks of {T.TEXT_CHANNELS} channels, max over time), Adam, {args.epochs} "
        f"epoch(s) per training stage (distillation {max(1, round(T.TEXT.distill_factor * args.epochs))}). "
        f"Torch on {args.threads} thread(s).",
        "",
        "### The pipeline, stage by stage (`lightning-nas demo --task text`)",
        "",
        "Each stage starts from the previous one's model. Size: serialized state; ratio against the explain "
        "stage's float model. Latency: median ms of batch 64 in torch eager and in ONNX Runtime (1 thread). "
        "attr rho: Spearman correlation over each sentence's words of the stage model's Integrated Gradients "
        "(on the embedding output) with the float model's, 20 validation sentences (quantize: the fake-quant "
        "twin of the int8 model, which has no gradients).",
        "",
        table(["stage", "test acc %", "params", "KiB", "smaller", "torch ms", "ORT ms", "attr rho"], stage_rows),
        "",
        f"The student halves the embedding and the channels. The int8 model keeps its embedding float "
        f"(`QuantizationAware(ignore=['embedding'])`): {facts['vocab']:,} words x {T.TEXT_EMBED // 2} = "
        f"{100 * emb_share:.0f}% of its parameters, so int8 barely changes its size; the convs and the classifier "
        "run int8.",
        "",
        f"Demo wall time {wall:.0f} s, CPU time {cpu:.0f} s (process and its ended children; the machine is "
        "shared, so the CPU time is what the demo costs on a free core).",
        "",
        "### One-shot search regret (exhaustive over the first conv's width)",
        "",
        f"DARTS ({min(T.TEXT.search_epochs, args.epochs)} epoch(s) over the supernet) chose **{picked}**. Each width "
        f"trained alone for {args.epochs} epoch(s):",
        "",
        table(["first conv width", "val acc %", "test acc %", "params"], ex_rows),
        "",
        f"Regret (best validation accuracy minus the chosen width's): **{regret:.2f} points** (best: {best[0]}). "
        f"One seed; the validation split holds {facts['n_val']:,} sentences, so the standard error of an accuracy "
        f"near {100 * best_acc:.0f}% is about {se:.1f} points: widths closer than that are a tie.",
        "",
        f"Run time {time.perf_counter() - t0:.0f} s.",
    ]
    path = write_section("text", "Text: WordNet glosses, pipeline and search regret", "\n".join(body), args)
    print(path.read_text())


if __name__ == "__main__":
    main()
