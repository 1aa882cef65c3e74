"""The study's explanation, logged once through the Tracker (W&B summary run when asked, files always).

Logged keys (``search/`` namespace):

``search/importance``         table: objective, method (fanova | ped_anova), param, importance, rank
``search/importance/<obj>/<method>/<param>``  the same as scalars in ``summary.json``
``search/trials``             table, one row per trial: number, state, every parameter, every objective
                              (W&B's parallel-coordinates panel plots this table)
``search/history``            line series over trial number: each objective and its best-so-far
``search/pareto_front``       table of the Pareto-optimal trials (several objectives)
``search/pareto``             image: all trials of the first two objectives, the front highlighted
``search/n_complete`` / ``search/n_pruned`` / ``search/n_failed`` and ``search/best/<obj>``  summary values
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_nas.tracking import Tracker

_EVALUATORS = {
    "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
    "ped_anova": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
}


def _objective_value(i: int, sign: float) -> Callable[[FrozenTrial], float]:
    """``sign`` x the trial's ``i``-th objective value (exact for ``sign=1.0``)."""
    return lambda t: sign * t.values[i]


def importances(
    study: optuna.Study, objectives: dict[str, str]
) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """fANOVA and PED-ANOVA importance of every parameter for every objective; ``(result, notes)``.

    fANOVA (Hutter et al. 2014) fits a random forest to ``params -> objective`` and attributes the variance of
    its marginal predictions to each parameter. PED-ANOVA (Watanabe et al. 2023) compares, per parameter, the
    Pearson divergence between the distribution of the top-quantile trials and of all trials. Each is
    normalised to sum to 1. Needs at least 2 completed trials with varying parameters.

    Examples:
        >>> import optuna
        >>> from lightning_nas.search.multitrial import importances
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> def objective(t):  # "lr" matters a thousand times more than "noise"
        ...     return 10 * t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1)
        >>> study.optimize(objective, n_trials=16)
        >>> result, notes = importances(study, {"loss": "minimize"})
        >>> sorted(result["loss"])
        ['fanova', 'ped_anova']
        >>> max(result["loss"]["fanova"], key=result["loss"]["fanova"].get)  # lr explains the loss
        'lr'
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    notes: list[str] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return out, [f"importance needs >= 2 completed trials, the study has {len(complete)}"]
    for i, (obj, direction) in enumerate(objectives.items()):
        sign = 1.0 if direction == "minimize" else -1.0  # PED-ANOVA treats a custom target as minimised
        for name, make in _EVALUATORS.items():
            target = _objective_value(i, 1.0 if name == "fanova" else sign)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    imp = optuna.importance.get_param_importances(study, evaluator=make(), target=target)
                out.setdefault(obj, {})[name] = {k: float(v) for k, v in imp.items()}
            except Exception as exc:
                notes.append(f"{name} importance for {obj!r} not computed: {type(exc).__name__}: {exc}")
    return out, notes


def pareto_figure(study: optuna.Study, objectives: dict[str, str]) -> Any:
    """Scatter of every completed trial on the first two objectives; the Pareto front in red, joined.

    Examples:
        >>> import optuna
        >>> import matplotlib.pyplot as plt
        >>> from lightning_nas.search.multitrial import pareto_figure
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(directions=["maximize", "minimize"])
        >>> study.optimize(lambda t: (t.suggest_float("w", 0, 1), t.suggest_float("w", 0, 1) ** 2), n_trials=5)
        >>> figure = pareto_figure(study, {"val_acc": "maximize", "latency_ms": "minimize"})
        >>> type(figure).__name__
        'Figure'
        >>> plt.close(figure)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(objectives)[:2]
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials}
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    rest = [t for t in trials if t.number not in front]
    ax.scatter([t.values[0] for t in rest], [t.values[1] for t in rest], c="0.6", s=18, label="trials")
    best = sorted((t for t in trials if t.number in front), key=lambda t: t.values[0])
    ax.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", c="tab:red", ms=6, label="Pareto front")
    for t in best:
        ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{names[0]} ({objectives[names[0]]})")
    ax.set_ylabel(f"{names[1]} ({objectives[names[1]]})")
    ax.set_title(f"{study.study_name}: {len(trials)} trials, {len(best)} on the front")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summarize(
    result: Any, files_dir: Path, wandb_mode: str | None = None, wandb_project: str = "lightning-nas-search"
) -> dict[str, Any]:
    """Log the study's explanation (see module docstring); fill ``result.importance`` and ``summary_dir``."""
    study, objectives = result.study, result.objectives
    loggers = []
    if wandb_mode is not None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [
            WandbLogger(
                project=wandb_project,
                group=study.study_name,
                name=f"{study.study_name}-summary",
                job_type="summary",
                save_dir=str(files_dir.parent),
                offline=wandb_mode == "offline",
                reinit="create_new",
            )
        ]
    tracker = Tracker(loggers=loggers, files_dir=files_dir)
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    objs = list(objectives)
    rows = [
        [t.number, t.state.name]
        + [_cell(t.params.get(p)) for p in params]
        + [(t.values[i] if t.values else None) for i in range(len(objs))]
        for t in trials
    ]
    tracker.log_table("search/trials", ["number", "state"] + params + objs, rows, step=0)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        ys: dict[str, list[float]] = {}
        for i, o in enumerate(objs):
            vals = [t.values[i] for t in done]
            pick = max if objectives[o] == "maximize" else min
            ys[o] = vals
            ys[f"best {o}"] = [pick(vals[: j + 1]) for j in range(len(vals))]
        tracker.log_line_series(
            "search/history", [t.number for t in done], ys, title="optimisation history", xname="trial", step=0
        )
    imp, notes = importances(study, objectives)
    imp_rows = [
        [o, m, p, v, r + 1]
        for o, per in imp.items()
        for m, d in per.items()
        for r, (p, v) in enumerate(sorted(d.items(), key=lambda kv: -kv[1]))
    ]
    if imp_rows:
        tracker.log_table("search/importance", ["objective", "method", "param", "importance", "rank"], imp_rows, step=0)
    if len(objs) > 1 and result.best_trials:
        front_rows = [
            [t.number] + [_cell(t.params.get(p)) for p in params] + list(t.values) for t in result.best_trials
        ]
        tracker.log_table("search/pareto_front", ["number"] + params + objs, front_rows, step=0)
        tracker.log_image("search/pareto", pareto_figure(study, objectives), caption="Pareto front", step=0)
    summ: dict[str, Any] = {
        f"search/n_{s}": sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")
    }
    summ.update({f"search/best/{k}": v for k, v in result.best_values.items()})
    summ.update(
        {f"search/importance/{o}/{m}/{p}": v for o, per in imp.items() for m, d in per.items() for p, v in d.items()}
    )
    summ["search/best_params"] = result.best_params
    if notes:
        summ["search/notes"] = notes
    tracker.log_summary(summ)
    if loggers:
        run = loggers[0].experiment
        result.wandb_runs.append(str(Path(run.dir).parent))
        run.finish()
    result.importance, result.summary_dir = imp, files_dir
    return summ


def _cell(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
