"""Keyword spotting on spoken digits (espeak-ng, ``SpokenDigitsDataModule``): the whole pipeline on a second
modality, each stage measured side by side, with time-frequency attributions and their drift after compression.

Stages (each a function of one ``SpeechRun``; the speech pieces a ``lightning-nas demo --task speech`` needs are the
package's: ``data.SpokenDigitsDataModule``, ``models.AudioCNN``, ``models.audio_search_space``,
``models.AUDIO_QUANT_IGNORE`` and ``AttributionMonitor(view="spectrogram")``):

1. ``search``: DARTS over the kernel shape of ``AudioCNN``'s 2nd and 3rd conv blocks (one tied decision: 3x3, 5x5,
   tall 7x3 across frequency, wide 3x7 across time); ``standalone``: every candidate trained alone as the final
   model is, to measure the search's regret (best standalone test accuracy minus that of the chosen kernel);
2. ``multitrial``: TPE over learning rate, weight decay and width, with fANOVA importances;
3. ``train``: the found kernel with the best hyperparameters, ``AttributionMonitor(method="saliency",
   view="spectrogram")`` attached: the float model every compression starts from;
4. compressions of that float model, each from a copy: ``distill`` (a half-width student, and the same student
   trained alone), ``prune`` (``StructuredPruning(0.5)``), ``quantize`` (QAT, real int8), ``lowrank``
   (``LowRankFactorization``); each measured with ``deploy.measure`` (batch 64) and evaluated on the test speakers;
5. ``drift``: saliency of each compressed model against the float model's on test clips (``explain.compare``:
   Spearman rank correlation of |saliency| and top-10% overlap), and of a second float model of the same kernel
   (another seed, from ``standalone``) as the reference for how far two equally good models' maps differ.

Run: ``python benchmarks/speech.py`` (writes ``benchmarks/results/speech.md`` and ``nas_runs/speech/report.html``);
``--quick`` runs a small data set for one or two epochs per stage and writes under ``benchmarks/results/quick/``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L
import torch
from torch import nn

from lightning_nas.data import SpokenDigitsDataModule
from lightning_nas.deploy import measure
from lightning_nas.explain import attribution as A
from lightning_nas.models import AUDIO_KERNELS, AUDIO_QUANT_IGNORE, AudioCNN, Classifier, audio_search_space
from lightning_nas.tracking import Tracker

QAT_LR_SCALE = 0.1  # as the digits demo: QAT fine-tunes at a tenth of the learning rate, BatchNorm frozen
FIRST_BLOCK = ("features.0", "features.1", "features.2")  # AudioCNN's first conv block (one input channel)


@dataclass
class SpeechConfig:
    """Sizes of one pipeline run (``full()``: the published run; ``quick()``: a smoke run in seconds)."""

    voices: tuple[str, ...] | None = None  # None: the data module's defaults
    variants: tuple[str, ...] | None = None
    takes: int = 3
    width: int = 8
    epochs: int = 6  # train, standalone fits, distillation
    search_epochs: int = 4
    trials: int = 5
    trial_epochs: int = 2
    widths: tuple[int, ...] = (6, 8, 12)
    finetune_epochs: int = 4  # prune and low-rank fine-tuning
    qat_epochs: int = 2
    standalone_seeds: tuple[int, ...] = (0, 1)
    probe: int = 60  # test clips attributed for the drift
    latency_rounds: int = 3  # every model timed round-robin this many times; the lowest median is kept
    seed: int = 0

    @classmethod
    def full(cls) -> SpeechConfig:
        return cls()

    @classmethod
    def quick(cls) -> SpeechConfig:
        return cls(
            voices=("en-us", "en-gb", "en-gb-scotland"),
            variants=("m1", "m3", "f1", "f2"),
            takes=1,
            epochs=1,
            search_epochs=1,
            trials=2,
            trial_epochs=1,
            widths=(4, 8),
            finetune_epochs=1,
            qat_epochs=1,
            standalone_seeds=(0, 1),
            probe=20,
            latency_rounds=1,
        )


@dataclass
class SpeechRun:
    """What the stages share: the data, the output folder, the float model and one row per measured model."""

    cfg: SpeechConfig
    out_dir: Path
    datamodule: SpokenDigitsDataModule
    tracker: Tracker
    rows: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict)  # stage -> the measured model
    arch: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    search_probs: dict[str, float] = field(default_factory=dict)
    standalone: dict[str, list[float]] = field(default_factory=dict)
    standalone_nets: dict[tuple[str, int], nn.Module] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)
    trials: list[list[Any]] = field(default_factory=list)
    float_module: Classifier | None = None
    compressed: dict[str, nn.Module] = field(default_factory=dict)  # stage -> model whose saliency is compared
    drift: list[list[Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def make_datamodule(cfg: SpeechConfig, cache_dir: str | Path | None = None) -> SpokenDigitsDataModule:
    kw: dict[str, Any] = {"takes": cfg.takes, "seed": cfg.seed, "cache_dir": cache_dir}
    if cfg.voices:
        kw["voices"] = cfg.voices
    if cfg.variants:
        kw["variants"] = cfg.variants
    return SpokenDigitsDataModule(batch_size=64, **kw)


def _trainer(run: SpeechRun, epochs: int, callbacks: list | None = None, logger: Any = False) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run.out_dir),
        deterministic=True,
    )


def test_accuracy(model: nn.Module, dm: SpokenDigitsDataModule) -> float:
    from lightning_nas._modules import eval_mode

    x, y = dm.split("test").tensors
    with eval_mode(model), torch.no_grad():
        return float((torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1) == y).float().mean())


def record(run: SpeechRun, stage: str, model: nn.Module, acc: float | None = None, note: str = "") -> dict[str, Any]:
    """Test accuracy, parameters, size and MACs of ``model`` now; its latency in ``stage_latency``."""
    from lightning_nas.compress.quantize import allow_int8_kernels

    with allow_int8_kernels():
        acc = test_accuracy(model, run.datamodule) if acc is None else acc
        m = measure(model, run.datamodule.example_input(64), latency=False, onnx=False)
    row = {
        "stage": stage,
        "test_acc": acc,
        "params": m.params,
        "size_bytes": m.size_bytes,
        "macs": m.macs,
        "latency_ms": None,
        "onnx_latency_ms": None,
        "note": note,
    }
    run.rows.append(row)
    run.models[stage] = model
    run.tracker.log_scalars({f"speech/{stage}/test_acc": acc}, step=len(run.rows))
    return row


def _fit(run: SpeechRun, module: L.LightningModule, epochs: int, callbacks: list | None = None) -> None:
    _trainer(run, epochs, callbacks).fit(module, datamodule=run.datamodule)


# ----------------------------------------------------------------------------------------------------- stages
def stage_search(run: SpeechRun) -> None:
    """DARTS over the kernel shape (one tied decision in ``audio_search_space``)."""
    from lightning_nas.callbacks import DifferentiableNAS

    L.seed_everything(run.cfg.seed, verbose=False)
    net = audio_search_space(run.cfg.width)
    nas = DifferentiableNAS(mode="darts", seed=run.cfg.seed)
    _fit(run, Classifier(net, lr=3e-3), run.cfg.search_epochs, [nas])
    run.arch, run.reasons = nas.export(), nas.reasons()
    run.search_probs = dict(nas.history[-1]["probs"]["kernel"]) if nas.history else {}
    record(run, "search (supernet path)", nas.best_model(), note=f"DARTS chose {run.arch['kernel']}")


def stage_standalone(run: SpeechRun) -> None:
    """Every kernel shape trained alone (as the final model is, default hyperparameters), on each seed."""
    for name, k in AUDIO_KERNELS.items():
        for seed in run.cfg.standalone_seeds:
            L.seed_everything(seed, verbose=False)
            module = Classifier(AudioCNN(run.cfg.width, kernels=(k, k)), lr=3e-3)
            _fit(run, module, run.cfg.epochs)
            run.standalone.setdefault(name, []).append(test_accuracy(module.net, run.datamodule))
            run.standalone_nets[(name, seed)] = module.net.eval()


def stage_multitrial(run: SpeechRun) -> None:
    """TPE over learning rate, weight decay and width for the found kernel; fANOVA importances."""
    from lightning_nas.search import run as search_run

    k = AUDIO_KERNELS[run.arch["kernel"]]

    def build(trial):
        width = trial.choice("width", list(run.cfg.widths))
        return Classifier(
            AudioCNN(width, kernels=(k, k)),
            lr=trial.loguniform("lr", 1e-3, 1e-2),
            weight_decay=trial.choice("weight_decay", [0.0, 1e-4, 1e-3]),
        )

    res = search_run(
        build,
        run.datamodule,
        objectives={"val_acc": "maximize"},
        n_trials=run.cfg.trials,
        strategy="tpe",
        seed=run.cfg.seed,
        out_dir=run.out_dir / "multitrial",
        trainer_kwargs={"max_epochs": run.cfg.trial_epochs, "deterministic": True},
        heartbeat_interval=None,
    )
    run.hparams = dict(res.best_params)
    run.trials = [
        [t.number, t.params["width"], t.params["lr"], t.params["weight_decay"], t.value]
        for t in res.study.trials
        if t.value is not None
    ]
    imp = (res.importance or {}).get("val_acc", {}).get("fanova", {})
    run.importance = {str(p): float(v) for p, v in imp.items()}
    run.tracker.log_table("search/trials", ["number", "width", "lr", "weight_decay", "val_acc"], run.trials, step=0)


def stage_train(run: SpeechRun) -> None:
    """The float model: found kernel, best hyperparameters; spectrogram saliency maps each epoch."""
    from lightning_nas.callbacks import AttributionMonitor

    k = AUDIO_KERNELS[run.arch["kernel"]]
    hp = run.hparams or {"width": run.cfg.width, "lr": 3e-3, "weight_decay": 0.0}
    L.seed_everything(run.cfg.seed, verbose=False)
    run.float_module = Classifier(AudioCNN(hp["width"], kernels=(k, k)), lr=hp["lr"], weight_decay=hp["weight_decay"])
    monitor = AttributionMonitor(method="saliency", view="spectrogram", n_samples=10, explain=True)
    trainer = _trainer(run, run.cfg.epochs, [monitor])  # no logger: files under out_dir/nas_files, run.tracker's
    trainer.fit(run.float_module, datamodule=run.datamodule)
    record(run, "train (float)", run.float_module.net, note=f"kernel {run.arch['kernel']}, width {hp['width']}")


def _copy_module(run: SpeechRun) -> Classifier:
    return copy.deepcopy(run.float_module)


def stage_distill(run: SpeechRun) -> None:
    """A half-width student of the same kernel, with the float model as teacher, and the same student alone."""
    from lightning_nas.callbacks import KnowledgeDistillation

    k = AUDIO_KERNELS[run.arch["kernel"]]
    width = max(2, run.float_module.net.classifier.in_features // 8)  # half the float model's first width
    L.seed_everything(run.cfg.seed, verbose=False)
    alone = Classifier(AudioCNN(width, kernels=(k, k)), lr=3e-3)
    _fit(run, alone, run.cfg.epochs)
    record(run, "student alone", alone.net, note=f"width {width}, no teacher")
    L.seed_everything(run.cfg.seed, verbose=False)
    student = Classifier(AudioCNN(width, kernels=(k, k)), lr=3e-3)
    teacher = copy.deepcopy(run.float_module.net).eval()
    kd = KnowledgeDistillation(teacher, temperature=4.0, alpha=0.7)
    _fit(run, student, run.cfg.epochs, [kd])
    agreement = kd.history[-1].get("distill/agreement") if kd.history else None
    note = f"width {width}, T=4, alpha=0.7" + (f", agreement {agreement:.3f}" if agreement is not None else "")
    record(run, "distill", student.net, note=note)
    run.compressed["distill"] = student.net.eval()


def stage_prune(run: SpeechRun) -> None:
    from lightning_nas.callbacks import StructuredPruning

    module = _copy_module(run)
    _fit(run, module, run.cfg.finetune_epochs, [StructuredPruning(amount=0.5, start_epoch=0)])
    record(run, "prune", module.net, note=f"half the channels removed, {run.cfg.finetune_epochs} epochs fine-tuning")
    run.compressed["prune"] = module.net.eval()


def _qat(run: SpeechRun, ignore: tuple[str, ...]) -> tuple[Classifier, Any]:
    from lightning_nas.callbacks import QuantizationAware

    module = _copy_module(run)
    qat = QuantizationAware(freeze_bn_after=0, ignore=list(ignore))
    module.lr = module.lr * QAT_LR_SCALE
    _fit(run, module, run.cfg.qat_epochs, [qat])
    return module, qat


def stage_quantize(run: SpeechRun) -> None:
    """QAT to int8 as ``AUDIO_QUANT_IGNORE`` says (every layer), and with the first conv block float (the digits
    demo's choice) for comparison."""
    _, first = _qat(run, FIRST_BLOCK)
    record(run, "quantize (int8, first block float)", first.int8_model, note=f"QAT {run.cfg.qat_epochs} epochs")
    _, qat = _qat(run, AUDIO_QUANT_IGNORE)
    float_layers = ", ".join(AUDIO_QUANT_IGNORE) or "none"
    record(
        run, "quantize (int8)", qat.int8_model, note=f"QAT {run.cfg.qat_epochs} epochs, float layers: {float_layers}"
    )
    # int8 kernels have no gradients: the quantized model's saliency is the fake-quant model's (same scales)
    if isinstance(qat.qat_model, nn.Module) and not isinstance(qat.qat_model, nn.ModuleDict):
        run.compressed["quantize (fake-quant)"] = qat.qat_model.eval()


def stage_lowrank(run: SpeechRun) -> None:
    from lightning_nas.callbacks import LowRankFactorization

    module = _copy_module(run)
    # the first conv sees one input channel (a 9-value kernel): nothing to factor; every other layer may be
    lr = LowRankFactorization(budget=0.5, start_epoch=0, ignore=["net.features.0"])
    _fit(run, module, run.cfg.finetune_epochs, [lr])
    ranks = ", ".join(f"{k.removeprefix('net.')} {v}" for k, v in lr.ranks.items())
    record(run, "low-rank", module.net, note=f"SVD, factors <= 0.5x params; ranks {ranks or 'none'}")
    run.compressed["low-rank"] = module.net.eval()


def stage_drift(run: SpeechRun) -> None:
    """Saliency of each compressed model against the float model's, on a fixed probe of test clips."""
    test = run.datamodule.split("test").tensors
    probe = A.select_probe(test, min(run.cfg.probe, len(test[0])), seed=run.cfg.seed)
    ref = run.float_module.net.eval()
    others = dict(run.compressed)
    twin = run.standalone_nets.get((run.arch.get("kernel", ""), run.cfg.standalone_seeds[-1]))
    if twin is not None and twin is not ref:
        others = {"another float model (seed)": twin, **others}
    for stage, model in others.items():
        d = A.compare(ref, model, probe, method="saliency", target="label")
        run.drift.append([stage, d.spearman, d.topk, d.agreement])
        with torch.enable_grad():
            attr = A.attribute(model.eval(), probe.x[:10], probe.y[:10], "saliency")
        preds = A.predict(model, probe.x[:10])
        image = A.spectrogram_overlay(probe.x[:10], attr, probe.y[:10], preds, run.datamodule.classes)
        run.tracker.log_image(f"explain/attribution/compressed/{stage}", image, step=0)
    run.tracker.log_table(
        "explain/attribution/compression_drift", ["model", "spearman", "top10%_overlap", "agreement"], run.drift, step=0
    )


def stage_latency(run: SpeechRun) -> None:
    """Every measured model timed round-robin (batch 64, torch eager and ONNX Runtime), ``latency_rounds`` times;
    the lowest median of each is kept, so a burst of load from other processes does not favour one model."""
    from lightning_nas.compress.quantize import allow_int8_kernels

    x = run.datamodule.example_input(64)
    for _ in range(run.cfg.latency_rounds):
        for row in run.rows:
            with allow_int8_kernels():
                m = measure(run.models[row["stage"]], x, repeats=20, warmup=3)
            for key, value in (("latency_ms", m.latency_ms), ("onnx_latency_ms", m.onnx_latency_ms)):
                if value is not None:
                    row[key] = value if row[key] is None else min(row[key], value)


STAGES = [
    ("search", stage_search),
    ("standalone", stage_standalone),
    ("multitrial", stage_multitrial),
    ("train", stage_train),
    ("distill", stage_distill),
    ("prune", stage_prune),
    ("quantize", stage_quantize),
    ("lowrank", stage_lowrank),
    ("drift", stage_drift),
    ("latency", stage_latency),
]


def run_pipeline(
    cfg: SpeechConfig, out_dir: str | Path, cache_dir: str | Path | None = None, verbose: bool = True
) -> SpeechRun:
    """Every stage in order; returns the shared state (rows, regret inputs, drift, timings). Writes the stages'
    files and ``report.html`` under ``out_dir``."""
    from lightning_nas.report import build_report

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dm = make_datamodule(cfg, cache_dir)
    t0 = time.perf_counter()
    dm.setup()
    run = SpeechRun(cfg, out, dm, Tracker(files_dir=out / "nas_files"))
    run.seconds["data"] = time.perf_counter() - t0
    for name, stage in STAGES:
        t0 = time.perf_counter()
        stage(run)
        run.seconds[name] = time.perf_counter() - t0
        if verbose:
            print(f"[speech] {name}: {run.seconds[name]:.0f} s", flush=True)
    build_report(out / "nas_files", out / "report.html", title="lightning-nas: spoken digits")
    return run


def regret(run: SpeechRun) -> tuple[float, str, str]:
    """(best standalone mean test accuracy - the chosen kernel's, chosen, best)."""
    means = {k: sum(v) / len(v) for k, v in run.standalone.items()}
    best = max(means, key=means.get)
    return means[best] - means[run.arch["kernel"]], run.arch["kernel"], best


def render(run: SpeechRun) -> str:
    from benchmarks._report import fmt, table

    dm, cfg = run.datamodule, run.cfg
    n = {s: len(dm.split(s)) for s in ("train", "val", "test")}
    gen = dm.generation_seconds
    lines = [
        f"Data: {sum(n.values())} one-second clips ({len(dm.voices)} espeak-ng voices x {len(dm.variants)} variants "
        f"= {len(dm.voices) * len(dm.variants)} speakers, {dm.takes} takes of each digit, white/pink noise at "
        f"{dm.snr_db[0]:g}-{dm.snr_db[1]:g} dB SNR), split by speaker: {n['train']} train / {n['val']} val / "
        f"{n['test']} test clips; test speakers never heard in training. Features {tuple(dm.input_shape)} log-mel. "
        + (f"Generated in {gen:.1f} s (espeak-ng, parallel)." if gen is not None else "Read from the cache.")
        + f" Model: `AudioCNN` (3 conv blocks, global max pooling), width {cfg.width} in the search.",
        "",
        "**Every stage** (test accuracy on the unseen speakers; size = serialized state dict; latency = median of "
        f"batch 64 in torch eager and ONNX Runtime, `deploy.measure`, lowest of {cfg.latency_rounds} round-robin "
        "rounds; MACs of the int8 rows count only the layers left float, torch's counter does not see quantized "
        "kernels). Compressions each start from a copy of the float model:",
        "",
        table(
            ["stage", "test acc", "params", "size (KiB)", "MACs (batch 64)", "ms (torch)", "ms (ORT)", "note"],
            [
                [
                    r["stage"],
                    r["test_acc"],
                    r["params"],
                    r["size_bytes"] / 1024,
                    "-" if r["macs"] is None else r["macs"],
                    "-" if r["latency_ms"] is None else r["latency_ms"],
                    "-" if r["onnx_latency_ms"] is None else r["onnx_latency_ms"],
                    r["note"],
                ]
                for r in run.rows
            ],
        ),
    ]
    if run.standalone:
        gap, chosen, best = regret(run)
        seeds = ", ".join(str(s) for s in cfg.standalone_seeds)
        lines += [
            "",
            f"**One-shot search regret** (DARTS, {cfg.search_epochs} epochs over one tied decision; each kernel then "
            f"trained alone for {cfg.epochs} epochs on seeds {seeds}): DARTS chose **{chosen}**, the best standalone "
            f"kernel is **{best}**: regret **{100 * gap:.2f} pt** (one test clip is "
            f"{100 / max(1, len(dm.split('test'))):.2f} pt). {run.reasons.get('kernel', '')}",
            "",
            table(
                ["kernel (freq x time)", "DARTS probability", "standalone test acc (mean)", "per seed"],
                [
                    [
                        k,
                        run.search_probs.get(k, float("nan")),
                        sum(v) / len(v),
                        " / ".join(fmt(a) for a in v),
                    ]
                    for k, v in run.standalone.items()
                ],
            ),
        ]
    if run.trials:
        imp = ", ".join(f"{p} {v:.2f}" for p, v in sorted(run.importance.items(), key=lambda kv: -kv[1]))
        lines += [
            "",
            f"**Multi-trial search** (TPE, {len(run.trials)} trials of {cfg.trial_epochs} epochs, kernel fixed to "
            f"the one found): best {', '.join(f'{k}={fmt(v)}' for k, v in run.hparams.items())}; fANOVA importance "
            f"of val_acc: {imp or 'too few trials'}.",
        ]
    if run.drift:
        lines += [
            "",
            "**Attribution drift** (saliency over the log-mel spectrogram, |gradient| ranks on "
            f"{min(cfg.probe, len(dm.split('test')))} test clips against the float model's; QAT through its "
            "fake-quant model, as int8 kernels have no gradient). The first row is a second float model of the "
            "same kernel (another seed): how far the maps of two equally good models differ anyway.",
            "",
            table(["model", "Spearman rho", "top-10% overlap", "prediction agreement"], run.drift),
        ]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in run.seconds.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks._report import QUICK, ROOT, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, one or two epochs per stage (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the published run: 2)")
    ap.add_argument("--out", default=None, help="run folder (default nas_runs/speech, quick: results/quick/...)")
    ap.add_argument("--cache-dir", default=None, help="spoken-digits cache (default: a fresh one, timed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cfg = SpeechConfig.quick() if args.quick else SpeechConfig.full()
    out = Path(args.out) if args.out else (QUICK / "speech_run" if args.quick else ROOT / "nas_runs" / "speech")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as fresh:  # without --cache-dir the data is generated (and timed) afresh
        run = run_pipeline(cfg, out, args.cache_dir or fresh)
    body = render(run) + (
        f" Total {time.perf_counter() - t0:.0f} s. Load average (1 min) at start / end: {load0:.1f} / "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the machine was shared: latency differences of a few "
        f"ms between models of the same shape are noise). Report: `{out / 'report.html'}`."
    )
    write_section("speech", "Keyword spotting on spoken digits (espeak-ng): every stage", body, args)


if __name__ == "__main__":
    main()
