"""Drift statistics and DriftMonitor: shifted/rotated digits are flagged, fresh clean splits are not."""

import copy

import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import DemoModel
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_nas.callbacks import DriftMonitor
from lightning_nas.deploy import DriftThresholds, ReferenceProfile, bundle, check_drift
from lightning_nas.deploy.drift import psi
from lightning_nas.deploy.profile import attribution_share
from lightning_nas.models import Classifier
from lightning_nas.tracking import read_offline_run
from tests.helpers import brighter, clean_pool, fast_trainer, rotated, trained_digits_cnn


@pytest.fixture(scope="module")
def setup():
    net, dm = trained_digits_cnn()
    profile = ReferenceProfile.from_data(net, dm.split("train").tensors[0])
    return net, dm, profile


def _check(net, profile, x, **kw):
    with torch.no_grad():
        classes = net(torch.from_numpy(x)).argmax(1).numpy()
    share = attribution_share(net, x[:64], profile.feature_mode)
    return check_drift(profile, x, classes, share, kw or None)


def test_psi_basics():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.9, 0.1], [0.1, 0.9]) > 1.0
    assert psi([0.5, 0.5], [0.6, 0.4]) == pytest.approx(0.1 * np.log(1.2 / 1) - 0.1 * np.log(0.8), rel=0.05)
    with pytest.raises(ValueError, match="bins"):
        psi([0.5, 0.5], [1.0])


@pytest.mark.slow
def test_false_alarm_rate_on_fresh_clean_splits(setup):
    """10 resamples of 200 unseen clean digits: measured 0/10 false alarms; allow at most 1."""
    net, dm, profile = setup
    pool = clean_pool(dm)
    alarms = []
    for seed in range(10):
        x = pool[np.random.default_rng(seed).choice(len(pool), 200, replace=False)]
        rep = _check(net, profile, x)
        alarms.append(rep.drifted)
        assert rep.next_step == "none" and "keep serving" in rep.verdict
    assert sum(alarms) <= 1, f"false-alarm rate {sum(alarms)}/10"


@pytest.mark.parametrize("shift", ["brighter", "darker", "rotated"])
def test_shifted_digits_are_detected(setup, shift):
    net, dm, profile = setup
    pool = clean_pool(dm)
    x = pool[np.random.default_rng(0).choice(len(pool), 200, replace=False)]
    x = {"brighter": brighter(x), "darker": (x * 0.6).astype(np.float32), "rotated": rotated(x)}[shift]
    rep = _check(net, profile, x)
    assert rep.drifted and rep.input_drift and len(rep.drifted_features) >= 10
    assert rep.next_step in ("retrain", "re-search") and "Next step" in rep.verdict
    assert rep.drifted_features[0] in rep.verdict  # the verdict names the features that moved
    m = rep.metrics()
    assert set(m) >= {
        "drift/psi_max",
        "drift/ks_max",
        "drift/prediction_psi",
        "drift/attribution_shift",
        "drift/drifted_features",
    }
    cols, rows = rep.table()
    assert cols[0] == "feature" and len(rows) == 64 and rows[0][4] is True


def test_a_few_moved_features_suggest_retraining(setup):
    """Only two pixels move (a stuck sensor): input drift in exactly those, next step retrain, not re-search."""
    net, dm, profile = setup
    pool = clean_pool(dm)
    x = pool[np.random.default_rng(1).choice(len(pool), 200, replace=False)].copy()
    x[:, 0, 0, 0] = 1.0
    x[:, 0, 7, 7] = 1.0
    rep = _check(net, profile, x, attribution_shift=0.9)
    assert sorted(rep.drifted_features) == ["x[0,0,0]", "x[0,7,7]"]
    assert rep.next_step == "retrain" and "x[0,0,0]" in rep.verdict


def test_thresholds_and_profile_validation(setup):
    net, dm, profile = setup
    for kw, msg in [
        ({"psi": 0}, "`psi` must be in"),
        ({"ks_alpha": 1.5}, "`ks_alpha`"),
        ({"attribution_shift": 2.0}, "`attribution_shift`"),
        ({"prediction_psi": -1}, "`prediction_psi`"),
        ({"min_drifted_features": 0}, "`min_drifted_features`"),
        ({"min_samples": 1}, "`min_samples`"),
    ]:
        with pytest.raises(ValueError, match=msg):
            DriftThresholds(**kw)
    with pytest.raises(ValueError, match="unknown key"):
        DriftThresholds.coerce({"psi_threshold": 0.2})
    data = copy.deepcopy(profile.data)
    del data["features"][5]
    with pytest.raises(ValueError, match=r"no entry for feature\(s\) \['x\[0,0,5\]'\]"):
        ReferenceProfile(data)
    data = copy.deepcopy(profile.data)
    del data["features"][3]["cuts"]
    with pytest.raises(ValueError, match=r"feature 'x\[0,0,3\]' lacks \['cuts'\]"):
        ReferenceProfile(data)
    with pytest.raises(ValueError, match="not a lightning_nas reference profile"):
        ReferenceProfile({"features": []})
    with pytest.raises(ValueError, match="do not match the reference profile's input shape"):
        check_drift(profile, np.zeros((50, 1, 9, 9)))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_drift(profile, np.full((50, 1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="predicted classes must lie in"):
        check_drift(profile, clean_pool(dm)[:50], np.full(50, 12))
    rep = check_drift(profile, clean_pool(dm)[:10])
    assert rep.status == "insufficient" and "at least 30" in rep.verdict
    with pytest.raises(ValueError, match="at least 20 reference inputs"):
        ReferenceProfile.from_data(net, torch.rand(5, 1, 8, 8))


def _loader(x, y, batch=64):
    return DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch)


@pytest.mark.slow
def test_drift_monitor_validate_and_predict_with_wandb(setup, tmp_path):
    """On an ordinary Classifier: a clean validate passes, a rotated one is flagged, logged to W&B, alerted."""
    net, dm, profile = setup
    out = bundle(net, dm.example_input(8), tmp_path / "bundle", reference_data=dm.split("train").tensors[0])
    module = Classifier(net)
    monitor = DriftMonitor(str(out), thresholds={"psi": 0.25}, stages=["validate", "predict"])
    logger = WandbLogger(project="drift-test", save_dir=str(tmp_path), offline=True)
    trainer = fast_trainer(tmp_path, callbacks=[monitor], logger=logger)
    xv, yv = dm.split("val").tensors
    trainer.validate(module, dataloaders=_loader(xv, yv), verbose=False)
    assert monitor.last_report.status == "ok", monitor.last_report.verdict
    with pytest.warns(UserWarning, match="DriftMonitor"):
        trainer.validate(module, dataloaders=_loader(rotated(xv.numpy()), yv), verbose=False)
    rep = monitor.last_report
    assert rep.drifted and rep.attribution_shift is not None and rep.n_samples == len(xv)
    preds = trainer.predict(module, dataloaders=DataLoader(torch.from_numpy(brighter(xv.numpy())), batch_size=50))
    assert len(preds) == 6 and monitor.last_report.drifted and monitor.last_report.prediction_psi > 0.25
    assert [h["stage"] for h in monitor.history] == ["validate", "validate", "predict"]
    assert monitor.state_dict()["history"][1]["drift/detected"] == 1.0
    files = monitor.tracker(trainer).files_dir
    import wandb

    wandb.finish()
    history, summary, _ = read_offline_run(tmp_path)
    logged = [h for h in history if "drift/psi_max" in h]
    assert len(logged) == 3 and logged[0]["drift/psi_max"] < 0.25 < logged[1]["drift/psi_max"]
    assert any("drift/features" in h for h in history)
    assert summary["drift/next_step"] in ("retrain", "re-search") and "Next step" in summary["drift/verdict"]
    assert (files / "tables" / "drift_features.csv").exists()


def test_drift_monitor_on_a_module_we_did_not_write(tmp_path):
    """Lightning's DemoModel, unmodified, under trainer.predict: random inputs vs inputs shifted by +1."""
    torch.manual_seed(0)
    model = DemoModel().eval()
    profile = ReferenceProfile.from_data(model, torch.randn(500, 32), attribution_samples=0)
    monitor = DriftMonitor(profile, stages=["predict"])
    trainer = fast_trainer(tmp_path, callbacks=[monitor])
    trainer.predict(model, dataloaders=DataLoader(torch.randn(200, 32), batch_size=32))
    assert monitor.last_report.status == "ok", monitor.last_report.verdict
    trainer.predict(model, dataloaders=DataLoader(torch.randn(200, 32) + 1.0, batch_size=32))
    rep = monitor.last_report
    assert rep.drifted and len(rep.drifted_features) >= 16 and rep.attribution_shift is None


def test_drift_monitor_bad_input(setup, tmp_path):
    net, dm, profile = setup
    with pytest.raises(ValueError, match="`stages` entries must be in"):
        DriftMonitor(profile, stages=["train"])
    with pytest.raises(ValueError, match="`ks_alpha` must be in"):
        DriftMonitor(profile, thresholds={"ks_alpha": 0.0})
    with pytest.raises(ValueError, match="does not exist"):
        DriftMonitor(str(tmp_path / "nowhere"))
    out = bundle(net, dm.example_input(8), tmp_path / "noprof")
    with pytest.raises(ValueError, match="has no reference profile"):
        DriftMonitor(str(out))
    monitor = DriftMonitor(profile)
    trainer = fast_trainer(tmp_path, callbacks=[monitor])
    flat = Classifier(torch.nn.Sequential(torch.nn.Linear(64, 10)))
    x, y = dm.split("val").tensors
    with pytest.raises(ValueError, match="reference profile has no entry for these features"):
        trainer.validate(flat, dataloaders=_loader(x.reshape(len(x), 64), y), verbose=False)


@pytest.mark.slow
@pytest.mark.ddp
def test_drift_monitor_ddp_gathers_all_ranks(setup, tmp_path):
    """2-process DDP validate: inputs gathered from both ranks, one check on rank 0, one set of logged values."""
    import json

    net, dm, profile = setup
    x, y = dm.split("val").tensors
    monitor = DriftMonitor(profile, attribution_samples=16)
    trainer = fast_trainer(tmp_path, callbacks=[monitor], strategy="ddp_spawn", devices=2)
    trainer.validate(Classifier(net), dataloaders=_loader(rotated(x.numpy()), y, batch=32), verbose=False)
    files = tmp_path / "nas_files"
    rows = [json.loads(line) for line in (files / "scalars.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["drift/detected"] == 1.0 and rows[0]["drift/drifted_features"] >= 10
    assert rows[0]["drift/n_samples"] == len(x)  # both ranks' halves
    summary = json.loads((files / "summary.json").read_text())
    assert summary["drift/next_step"] in ("retrain", "re-search")
    table = (files / "tables" / "drift_features.jsonl").read_text().splitlines()
    assert len(table) == 1 and len(json.loads(table[0])["rows"]) == 64
