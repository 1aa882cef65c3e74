"""Multi-trial search strategies on the enumerable 27-architecture digits space.

Three parts, all written to ``benchmarks/results/multitrial_search.md``:

1. **Sample efficiency** (cheap, many seeds). Each strategy samples the three ``LayerChoice`` labels of
   ``benchmarks/_digits_space.py`` plus an irrelevant ``dummy`` float; a trial's "training" is a LOOKUP of the
   architecture's standalone validation accuracy in the cached ground truth
   (``results/digits_space_truth.json``, 27 archs x 2 seeds, 12 epochs each), taking one of its two seeds'
   accuracies at random (real seed-to-seed noise). Reported: trials until one of the top-3 architectures (by
   mean standalone val accuracy) is first sampled, median over seeds, relative to random search.
2. **Importance**: fANOVA and PED-ANOVA on a TPE study of the same lookup objective; where the dummy ranks.
3. **Machinery and throughput** (real fits): ``lightning-nas search`` workers (1, then 2 processes) on one
   SQLite study; each trial a real Lightning fit of the digits space with ``run`` resolving the choices;
   trials/hour from the study's own trial timestamps (process start-up excluded), and the ground-truth rank of
   the architecture the real search picked.

Run: ``python benchmarks/multitrial_search.py [--seeds 7] [--budget 40] [--fit-trials 8]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _digits_space as ds  # noqa: E402
from benchmarks._report import table, write_section  # noqa: E402
from lightning_nas.search.multitrial import SearchTrial, importances, make_sampler, open_storage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
STRATEGIES = ["random", "grid", "tpe", "gp", "evolution", "reinforce", "nsga2"]


def _truth():
    t = ds.load_truth()
    by_key = {r["key"]: r for r in t["archs"]}
    ranked = sorted(by_key, key=lambda k: -by_key[k]["val_acc"])
    return by_key, ranked


def _sampler(strategy: str, seed: int, budget: int):
    grid = {lb: list(ds.CANDIDATES) for lb in ds.LABELS}
    grid["dummy"] = [0.5]  # grid cannot enumerate a float: the dummy is pinned
    kwargs = {"tpe": dict(n_startup_trials=5), "gp": dict(n_startup_trials=5),
              "evolution": dict(population_size=6, sample_size=3), "nsga2": dict(population_size=6)}.get(strategy, {})
    return make_sampler(strategy, seed=seed, search_space=grid, n_trials=budget, **kwargs)


def lookup_study(strategy: str, seed: int, budget: int, by_key) -> optuna.Study:
    """One study whose objective is the cached standalone accuracy (one of two seeds, at random)."""
    rng = np.random.RandomState(10_000 + seed)
    study = optuna.create_study(direction="maximize", sampler=_sampler(strategy, seed, budget))

    def objective(ot):
        trial = SearchTrial(ot)
        arch = {lb: trial.choice(lb, list(ds.CANDIDATES)) for lb in ds.LABELS}
        trial.uniform("dummy", 0.0, 1.0)  # sampled, never used
        row = by_key[ds.arch_key(arch)]
        return float(row["val_acc_per_seed"][rng.randint(len(row["val_acc_per_seed"]))])

    study.optimize(objective, n_trials=budget)
    return study


def first_hit(study: optuna.Study, targets: set[str], budget: int) -> int:
    for i, t in enumerate(study.trials, 1):
        if ds.arch_key({lb: t.params[lb] for lb in ds.LABELS}) in targets:
            return i
    return budget + 1  # not reached within the budget (censored)


def efficiency(seeds: int, budget: int) -> tuple[str, dict]:
    by_key, ranked = _truth()
    top3, top1 = set(ranked[:3]), {ranked[0]}
    rows, med, med1 = [], {}, {}
    for s in STRATEGIES:
        t0 = time.perf_counter()
        hits3, hits1, regret10, regret20 = [], [], [], []
        for seed in range(seeds):
            study = lookup_study(s, seed, budget, by_key)
            hits3.append(first_hit(study, top3, budget))
            hits1.append(first_hit(study, top1, budget))
            for n, acc in ((10, regret10), (20, regret20)):  # truth of the arch the search would pick after n
                done = study.trials[:n]
                pick = max(done, key=lambda t: t.value)
                acc.append(by_key[ranked[0]]["val_acc"]
                           - by_key[ds.arch_key({lb: pick.params[lb] for lb in ds.LABELS})]["val_acc"])
        med[s] = statistics.median(hits3)
        med1[s] = statistics.median(hits1)
        rows.append([s, med[s], None, med1[s], None, f"{sum(h <= budget for h in hits3)}/{seeds}",
                     float(np.mean(regret10)), float(np.mean(regret20)), (time.perf_counter() - t0) / seeds])
    for r in rows:
        r[2], r[4] = r[1] / med["random"], r[3] / med1["random"]
    cols = ["strategy", "median trials to a top-3 arch", "vs random", "median trials to the best arch", "vs random",
            "runs reaching top-3", "mean regret of pick @10 (val acc)", "mean regret of pick @20", "s per run"]
    return table(cols, rows), {"median": med, "median_best": med1, "top3": sorted(top3)}


def importance_rank(n_trials: int = 150, seeds: int = 3) -> tuple[str, dict]:
    """Importance on studies of ``n_trials`` lookup trials: random sampling (what fANOVA assumes) and TPE."""
    by_key, _ = _truth()
    rows, ranks = [], {}
    for strategy in ("random", "tpe"):
        for seed in range(seeds):
            imp, notes = importances(lookup_study(strategy, seed, n_trials, by_key), {"val_acc": "maximize"})
            for method, d in imp.get("val_acc", {}).items():
                order = sorted(d, key=lambda k: -d[k])
                ranks.setdefault((strategy, method), []).append(order.index("dummy") + 1)
                rows.append([strategy, seed, method] + [f"{p} ({d[p]:.3f})" for p in order]
                            + [f"{order.index('dummy') + 1} of {len(order)}"])
            rows += [[strategy, seed, "note", n, "", "", "", ""] for n in notes]
    cols = ["study sampler", "seed", "method", "1st", "2nd", "3rd", "4th", "dummy ranks"]
    return table(cols, rows), ranks


# ------------------------------------------------------------------------------------------------ real fits
def build(trial):
    """Worker build: the digits space as an ordinary Classifier; ``run`` samples and freezes b1/b2/b3."""
    from lightning_nas.models import Classifier

    return Classifier(ds.build_model(None), lr=trial.loguniform("lr", 3e-3, 3e-2))


def _workers(n_procs: int, n_trials: int, work: Path, epochs: int) -> optuna.Study:
    db = work / f"w{n_procs}.db"
    cfg = work / f"w{n_procs}.yaml"
    cfg.write_text("\n".join([
        f"build: {Path(__file__).resolve()}:build",
        "datamodule: {class_path: lightning_nas.data.DigitsDataModule, init_args: {batch_size: 64}}",
        "objectives: {val_acc: maximize}", f"n_trials: {n_trials}", "strategy: evolution", "seed: 0",
        "sampler_kwargs: {population_size: 4, sample_size: 2}",
        f"trainer: {{max_epochs: {epochs}}}", f"out_dir: {work / 'out'}"]) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    procs = [subprocess.Popen([sys.executable, "-m", "lightning_nas", "search", "--config", str(cfg), "--storage",
                               f"sqlite:///{db}", "--study", "bench"], env=env, cwd=str(ROOT),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n_procs)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"worker failed: {err[-2000:]}")
    return optuna.load_study(study_name="bench", storage=open_storage(f"sqlite:///{db}"))


def throughput(n_trials: int, epochs: int) -> tuple[str, dict]:
    by_key, ranked = _truth()
    rows, rate = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            study = _workers(n, n_trials, Path(tmp), epochs)
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            rate[n] = len(done) / span * 3600
            best = study.best_trial
            key = ds.arch_key({lb: best.params[lb] for lb in ds.LABELS})
            rows.append([n, len(done), span, rate[n], key, ranked.index(key) + 1, best.value])
    cols = ["workers", "trials", "wall s (first start to last end)", "trials/hour", "arch picked",
            "its ground-truth rank (of 27)", "its val_acc in the search"]
    return table(cols, rows), {"speedup": rate[2] / rate[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=15)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--fit-trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    eff, e = efficiency(args.seeds, args.budget)
    imp, ranks = importance_rank()
    thr, th = throughput(args.fit_trials, args.epochs)
    best_ratio = min(v / e["median"]["random"] for k, v in e["median"].items() if k != "random")
    best1 = {k: v / e["median_best"]["random"] for k, v in e["median_best"].items() if k != "random"}
    body = f"""
Space: `benchmarks/_digits_space.py`, 3 `LayerChoice`s x {{conv3, conv1, skip}} = 27 architectures, plus an
irrelevant `dummy` float in [0, 1]. Top-3 by standalone val accuracy: {', '.join(e['top3'])}.

**1. Sample efficiency** (objective = cached ground-truth LOOKUP, not training: one of the two standalone seeds'
val accuracy, at random; {args.seeds} seeds per strategy, budget {args.budget} trials; a run that never samples a
top-3 arch counts as {args.budget + 1}). Samplers as `lightning_nas.search.multitrial.make_sampler` builds
them (TPE/GP: 5 start-up trials; evolution P=6, S=3; NSGA-II population 6; REINFORCE defaults (lr 0.2, baseline decay 0.8); grid pins the
dummy to 0.5).

{eff}

Goal was <= 0.5x random for reaching a top-3 architecture: **not met**, best ratio {best_ratio:.2f}x. In a
27-architecture space with 3 targets this metric has a floor: blind sampling without repeats needs a median of 6
trials (1 - C(24,k)/C(27,k) >= 0.5 first at k = 6), random search with repeats also about 6, and a model
cannot learn much from the first 2-3 trials, so ~3 trials (0.5x) is out of reach for every strategy here. The
stricter target, the single best architecture, separates them: ratio vs random per strategy
{', '.join(f'{k} {v:.2f}x' for k, v in best1.items())}.

**2. Importance** of the three choices and the dummy (Optuna's fANOVA and PED-ANOVA through
`lightning_nas.search.multitrial.importances`, on studies of 150 lookup trials):

{imp}

Dummy ranked last in {sum(r == 4 for v in ranks.values() for r in v)} of {sum(len(v) for v in ranks.values())}
analyses (fANOVA: {sum(r == 4 for k, v in ranks.items() if k[1] == 'fanova' for r in v)} of
{sum(len(v) for k, v in ranks.items() if k[1] == 'fanova')}). On TPE studies fANOVA gives
the choice TPE stopped exploring (here `b2`, which varies least among the top architectures) little importance:
its samples lose variance; fANOVA assumes roughly uniform sampling.

**3. Real fits** (`lightning-nas search` workers on one SQLite study, strategy `evolution`, each trial a Lightning
fit of {args.epochs} epochs on digits with `lr` searched too; process start-up excluded from the rate):

{thr}

2 workers vs 1: **{th['speedup']:.2f}x** trials/hour (goal >= 1.8x; on a machine with fewer free cores than
workers this cannot be reached - rerun on a quiet machine with >= 2 free cores).
Total benchmark time: {time.perf_counter() - t0:.0f} s.
"""
    path = write_section("multitrial_search", "Multi-trial search: strategies, importance, workers",
                         "python benchmarks/multitrial_search.py", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
