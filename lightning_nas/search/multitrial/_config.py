"""One search worker from a YAML file: what ``lightning-nas search --config search.yaml`` runs.

.. code-block:: yaml

    build: my_project.search:build          # module:function, or path/to/file.py:function
    datamodule:                             # module:function (called with the trial, or with no argument) ...
      class_path: lightning_nas.data.DigitsDataModule   # ... or a class with init_args
      init_args: {batch_size: 64}
    objectives: {val_acc: maximize, latency_ms: minimize}
    n_trials: 40                            # shared by every worker of the study
    strategy: tpe                           # random | grid | tpe | gp | nsga2 | evolution | reinforce
    pruner: median                          # median | halving | none (single objective only)
    seed: 0                                 # each worker offsets it by its process id
    trainer: {max_epochs: 3}                # lightning.Trainer arguments
    sampler_kwargs: {}
    timeout: null
    out_dir: nas_runs/search
    wandb: false                            # true/offline or online
    heartbeat_interval: 60
    dedup: false                            # true: a repeated configuration is answered from the study
    storage: sqlite:///study.db             # --storage overrides
    study_name: digits                      # --study overrides
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

_KEYS = {
    "build",
    "datamodule",
    "objectives",
    "n_trials",
    "strategy",
    "pruner",
    "seed",
    "trainer",
    "sampler_kwargs",
    "timeout",
    "out_dir",
    "wandb",
    "wandb_project",
    "heartbeat_interval",
    "grace_period",
    "storage",
    "study_name",
    "search_space",
    "dedup",
}


def import_object(spec: str, what: str = "object") -> Any:
    """``"package.module:name"`` or ``"path/to/file.py:name"`` -> the object (dotted ``name`` allowed)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{what} must be given as 'module:name' or 'file.py:name', got {spec!r}")
    mod_name, _, attr = spec.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name).resolve()
        if not path.exists():
            raise ValueError(f"{what} {spec!r}: file {str(path)!r} does not exist")
        name = f"_lightning_nas_user_{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            s = importlib.util.spec_from_file_location(name, path)
            assert s is not None and s.loader is not None  # a *.py path always has a source loader
            module = importlib.util.module_from_spec(s)
            sys.modules[name] = module
            s.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"{what} {spec!r}: cannot import {mod_name!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _datamodule(spec: Any) -> Any:
    if isinstance(spec, dict):
        if "class_path" not in spec:
            raise ValueError(f"`datamodule` mapping needs a class_path, got {spec!r}")
        cls_path = spec["class_path"]
        cls = import_object(cls_path if ":" in cls_path else ":".join(cls_path.rsplit(".", 1)), "datamodule")
        return cls(**dict(spec.get("init_args") or {}))
    obj = import_object(spec, "datamodule")
    if inspect.isclass(obj):
        return obj()
    if callable(obj) and not inspect.signature(obj).parameters:
        return obj()
    return obj


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check the YAML; unknown keys are an error naming the allowed ones."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ValueError(f"--config {str(p)!r} does not exist")
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {str(p)!r} must hold a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ValueError(f"--config {str(p)!r}: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    for key in ("build", "objectives", "n_trials"):
        if key not in cfg:
            raise ValueError(f"--config {str(p)!r} lacks {key!r}")
    return cfg


def run_config(
    path: str | Path, storage: str | None = None, study_name: str | None = None, n_trials: int | None = None
) -> Any:
    """Start one worker of the study described by the YAML file at ``path`` (see module docstring)."""
    from lightning_nas.search.multitrial._driver import run

    cfg = load_config(path)
    seed = cfg.get("seed")
    return run(
        import_object(cfg["build"], "build"),
        _datamodule(cfg.get("datamodule", "lightning_nas.data:DigitsDataModule")),
        objectives=cfg["objectives"],
        n_trials=n_trials if n_trials is not None else cfg["n_trials"],
        strategy=cfg.get("strategy", "tpe"),
        storage=storage or cfg.get("storage"),
        study_name=study_name or cfg.get("study_name"),
        trainer_kwargs=cfg.get("trainer"),
        timeout=cfg.get("timeout"),
        pruner=cfg.get("pruner"),
        seed=None if seed is None else int(seed) + os.getpid(),
        search_space=cfg.get("search_space"),
        sampler_kwargs=cfg.get("sampler_kwargs"),
        wandb=cfg.get("wandb", False),
        wandb_project=cfg.get("wandb_project", "lightning-nas-search"),
        out_dir=cfg.get("out_dir", "nas_runs/search"),
        heartbeat_interval=cfg.get("heartbeat_interval", 60),
        grace_period=cfg.get("grace_period"),
        dedup=cfg.get("dedup", False),
    )
