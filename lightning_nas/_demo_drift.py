"""The demo's explanation of compression: the float model's attributions on a fixed probe (after the explain
stage) and, for every later stage's model, how far its attributions moved from them (Spearman over each sample's
features, top-10% overlap, prediction agreement). Token tasks compare each sentence's words only (padding would
agree trivially) and log every stage's token attributions for the report's highlighted-text view."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lightning_nas._modules import eval_mode

if TYPE_CHECKING:
    from lightning_nas.demo import DemoState


def demo_tracker(state: DemoState) -> Any:
    """A tracker writing into the demo's W&B run and its file sink (where the report reads the run's tables)."""
    from lightning_nas.tracking import Tracker
    from lightning_nas.tracking.sink import FILES_DIRNAME

    try:
        files_dir = Path(state.logger.experiment.dir) / FILES_DIRNAME
    except Exception:  # no W&B run (e.g. a CSVLogger in a benchmark): files next to the demo's outputs
        files_dir = state.out_dir / FILES_DIRNAME
    return Tracker(loggers=[state.logger] if state.logger is not None else [], files_dir=files_dir)


def _attributions(state: DemoState, net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from lightning_nas.explain import attribution as A

    task = state.task
    emb = net.get_submodule(task.embedding) if task.attribution == "tokens" and task.embedding else None
    with eval_mode(net), torch.inference_mode(False), torch.enable_grad():
        return A.attribute(net, x, target, "integrated_gradients", embedding=emb, n_steps=8)


def _reference(state: DemoState) -> dict[str, Any]:
    if state.reference is None:
        raise RuntimeError("the explain stage sets the float model's reference attributions first")
    return state.reference


def set_reference(state: DemoState, net: torch.nn.Module, n_samples: int = 20) -> None:
    """The float model's attributions on a fixed validation probe: later stages' drift is measured against them."""
    from lightning_nas.explain import attribution as A

    probe = A.select_probe(state.datamodule.split("val").tensors, n_samples, seed=0)
    assert probe.y is not None  # the validation split is labelled
    attr = _attributions(state, net, probe.x, probe.y)
    state.reference = {"x": probe.x, "y": probe.y, "attr": attr, "preds": A.predict(net.eval(), probe.x)}


def attribution_drift(state: DemoState, stage: str, net: torch.nn.Module) -> dict[str, float]:
    """Spearman / top-10% overlap of ``net``'s attributions with the float model's, on the same probe and labels;
    logged as the table ``explain/attribution/drift`` and, for token tasks, ``explain/attribution/tokens/<stage>``."""
    from lightning_nas.explain import attribution as A

    ref = _reference(state)
    attr = _attributions(state, net, ref["x"], ref["y"])
    preds = A.predict(net.eval(), ref["x"])
    if state.task.attribution == "tokens":  # over each sentence's words: padding would agree trivially
        pairs = [
            A.rank_agreement(ref["attr"][i : i + 1, m], attr[i : i + 1, m], 0.1) for i, m in enumerate(ref["x"] != 0)
        ]
        rho, top = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    else:
        rho, top = A.rank_agreement(ref["attr"], attr, 0.1)
    finite = rho[np.isfinite(rho)]
    out = {
        "spearman": float(finite.mean()) if finite.size else float("nan"),
        "topk": float(top.mean()),
        "agreement": float((preds == ref["preds"]).float().mean()),
    }
    state.drift_rows.append([stage, out["spearman"], out["topk"], out["agreement"]])
    tracker = demo_tracker(state)
    cols = ["stage", "spearman", "top10_overlap", "prediction_agreement"]
    tracker.log_table("explain/attribution/drift", cols, state.drift_rows)
    if state.task.attribution == "tokens":
        _log_token_stages(state, tracker, stage, attr, preds)
    return out


def _log_token_stages(state: DemoState, tracker: Any, stage: str, attr: torch.Tensor, preds: torch.Tensor) -> None:
    """One token table over every stage so far, sentence by sentence (``"<i> <stage>"`` rows next to each other:
    the report shows each probe sentence as the float model and every later stage explained it)."""
    from lightning_nas.explain._attribution_utils import TOKEN_COLUMNS, token_rows

    ref = _reference(state)
    kw = state.task.explain_kwargs(state.datamodule)
    names = {"vocabulary": kw.get("vocabulary"), "class_names": kw.get("class_names")}
    if not ref.get("token_rows"):
        ref["token_rows"] = {"explain": token_rows(ref["x"], ref["attr"], ref["y"], ref["preds"], **names)}
    ref["token_rows"][stage] = token_rows(ref["x"], attr, ref["y"], preds, **names)
    rows = [
        [f"{i} {name}", *r[1:]]
        for i in range(len(ref["x"]))
        for name, stage_rows in ref["token_rows"].items()
        for r in stage_rows
        if r[0] == i
    ]
    tracker.log_table("explain/attribution/tokens/stages", list(TOKEN_COLUMNS), rows)
