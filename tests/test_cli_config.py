"""LightningCLI: every public callback builds from ``class_path``/``init_args``; the example configs run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

import lightning_nas.callbacks as C
from tests.helpers import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _typical_init_args(name, tmp_path):
    """Typical arguments per public callback, as a YAML user would write them."""
    from lightning_nas.deploy import ReferenceProfile
    from lightning_nas.models import DigitsCNN

    teacher = tmp_path / "teacher.pt"
    torch.save(DigitsCNN(8).state_dict(), teacher)
    profile = ReferenceProfile.from_data(DigitsCNN(8).eval(), torch.rand(64, 1, 8, 8), attribution_samples=0)
    profile_path = profile.save(tmp_path / "profile.json")
    return {
        "DifferentiableNAS": {"mode": "gdas", "arch_lr": 0.01, "start_epoch": 1},
        "SubnetSampling": {"population": 4, "generations": 2},
        "TrialPruningCallback": {
            "trial": {"class_path": "optuna.trial.FixedTrial", "init_args": {"params": {}}},
            "monitor": "val_loss",
        },
        "StructuredPruning": {
            "amount": 0.3,
            "importance": "l2",
            "schedule": "cubic",
            "start_epoch": 1,
            "end_epoch": 3,
            "ignore": ["net.features.0"],
        },
        "MagnitudePruning": {"amount": 0.5, "global_pruning": False},
        "LowRankFactorization": {"energy": 0.8, "start_epoch": 1},
        "QuantizationAware": {"start_epoch": 2, "freeze_bn_after": 1, "ignore": ["classifier"]},
        "KnowledgeDistillation": {
            "teacher": str(teacher),
            "temperature": 2.0,
            "alpha": 0.7,
            "teacher_architecture": {"class_path": "lightning_nas.models.DigitsCNN", "init_args": {"width": 8}},
        },
        "AttributionMonitor": {"method": "saliency", "n_samples": 5, "target": "pred"},
        "TrainingDynamics": {"every_n_steps": 10, "layers": ["net.features.0"]},
        "DecisionPaths": {"n_samples": 20, "top_k": 2},
        "ArchitectureView": {"max_nodes": 30},
        "DriftMonitor": {"reference": str(profile_path), "thresholds": {"psi": 0.3}, "stages": ["validate"]},
    }[name]


def test_every_public_callback_builds_from_class_path(tmp_path):
    names = [n for n in C.__all__ if n not in ("load_compressed", "LightningNASCallback")]
    assert len(names) == 12  # TrialPruningCallback is exported by lightning_nas.search
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cb", type=L.Callback)
    for name in names:
        init_args = _typical_init_args(name, tmp_path)
        cfg = parser.parse_args(
            ["--cb", json.dumps({"class_path": f"lightning_nas.callbacks.{name}", "init_args": init_args})]
        )
        cb = parser.instantiate_classes(cfg).cb
        assert type(cb) is getattr(C, name), name
        for key, value in init_args.items():  # the argument arrived, not the default
            kept = getattr(cb, key, None)
            if isinstance(kept, (int, float, str, list, tuple)):  # stored as given (others are parsed objects)
                assert list(kept) == value if isinstance(kept, tuple) else kept == value, (name, key)
    kd = parser.instantiate_classes(
        parser.parse_args(
            [
                "--cb",
                json.dumps(
                    {
                        "class_path": "lightning_nas.callbacks.KnowledgeDistillation",
                        "init_args": _typical_init_args("KnowledgeDistillation", tmp_path),
                    }
                ),
            ]
        )
    ).cb
    assert isinstance(kd.teacher, torch.nn.Module) and not kd.teacher.training  # loaded from the checkpoint path


def test_bad_init_args_fail_with_the_callbacks_message():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cb", type=L.Callback)
    cfg = parser.parse_args(
        ["--cb", json.dumps({"class_path": "lightning_nas.callbacks.StructuredPruning", "init_args": {"amount": 1.5}})]
    )
    with pytest.raises(ValueError, match="amount"):
        parser.instantiate_classes(cfg)


def _run_cli(tmp_path, config, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "cli" / "main.py"),
        "fit",
        "--config",
        str(ROOT / config),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _saved_config(tmp_path):
    return yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())


@pytest.mark.slow
def test_cli_config_prunes_quantizes_and_explains_in_one_fit(tmp_path):
    _run_cli(
        tmp_path,
        "examples/cli/config.yaml",
        "--trainer.max_epochs=3",
        # command line: `callbacks.init_args.X` sets X of the LAST callback in the list (AttributionMonitor);
        "--trainer.callbacks.init_args.n_samples=6",
        # `callbacks+=` appends one, whose arguments the next `init_args` flag sets
        "--trainer.callbacks+=lightning_nas.callbacks.TrainingDynamics",
        "--trainer.callbacks.init_args.every_n_steps=2",
    )
    onnx = tmp_path / "nas_runs" / "cli" / "model_int8.onnx"  # the YAML's relative onnx_path, from the cwd
    cbs = _saved_config(tmp_path)["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in cbs] == [
        "StructuredPruning",
        "QuantizationAware",
        "AttributionMonitor",
        "TrainingDynamics",
    ]
    assert cbs[2]["init_args"]["n_samples"] == 6 and cbs[3]["init_args"]["every_n_steps"] == 2
    assert cbs[0]["init_args"]["amount"] == 0.5 and cbs[0]["init_args"]["end_epoch"] == 1
    # pruning: the checkpoint holds 8 of 16 and 16 of 32 channels
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), map_location="cpu", weights_only=False)
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert shapes["net.features.0.weight"] == (8, 1, 3, 3) and shapes["net.features.3.weight"][:2] == (16, 8)
    # QAT: a real int8 ONNX model (QLinearConv after ORT's fusion), written at fit end
    from lightning_nas.compress.quantize import int8_onnx_ops

    ops = int8_onnx_ops(onnx.read_bytes())
    assert any(op in ops for op in ("QLinearConv", "ConvInteger"))
    # attribution: maps each epoch in the file sink, and drift after the structural changes
    scal = read_jsonl(next(tmp_path.rglob("nas_files/scalars.jsonl")))
    assert sum("explain/attribution/aopc" in s for s in scal) == 3
    assert any("explain/attribution/drift_spearman" in s for s in scal)
    assert any(s.get("explain/attribution/structural_changes", 0) >= 1 for s in scal)
    assert any("dynamics/grad_norm_total" in s for s in scal)  # the callback added on the command line ran


@pytest.mark.slow
def test_cli_search_config_finds_an_architecture(tmp_path):
    _run_cli(
        tmp_path, "examples/cli/search.yaml", "--trainer.max_epochs=2", "--trainer.callbacks.init_args.mode=gdas"
    )  # the last callback: GDAS instead of DARTS
    cbs = _saved_config(tmp_path)["trainer"]["callbacks"]
    assert cbs[1]["class_path"].endswith("DifferentiableNAS") and cbs[1]["init_args"]["mode"] == "gdas"
    summary = json.loads(next(tmp_path.rglob("nas_files/summary.json")).read_text())
    assert summary["nas/arch/block"] in ("conv3x3", "conv5x5", "sepconv3x3")
