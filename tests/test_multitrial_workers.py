"""Many workers on one storage: journal/SQLite worker processes, a killed worker, a real PostgreSQL, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lightning_nas.search.multitrial import open_storage
from tests.helpers import multitrial_config

optuna.logging.set_verbosity(optuna.logging.ERROR)
ROOT = Path(__file__).resolve().parent.parent


def _worker(cfg: Path, storage: str, study: str, **env) -> subprocess.Popen:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_nas", "search", "--config", str(cfg), "--storage", storage, "--study", study],
        env=e,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path):
    cfg = multitrial_config(tmp_path, n_trials=6)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    url = f"journal://{tmp_path / 'study.log'}"
    procs = [_worker(cfg, url, "shared", LNAS_TEST_BARRIER=str(barrier), LNAS_TEST_SLEEP="0.3") for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6  # the shared budget, exactly: nothing lost, nothing extra
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name != "COMPLETE")
    assert len({t.number for t in complete}) == 6
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both workers ran trials


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_usable(tmp_path):
    from lightning_nas.search.multitrial._config import run_config

    cfg = multitrial_config(tmp_path, n_trials=3, heartbeat_interval=1, grace_period=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    marker = tmp_path / "started"
    victim = _worker(cfg, url, "k", LNAS_TEST_MARKER=str(marker), LNAS_TEST_SLEEP="600")
    t0 = time.time()
    while not marker.exists():
        assert victim.poll() is None and time.time() - t0 < 120, victim.stdout.read() if victim.poll() else "slow"
        time.sleep(0.1)
    time.sleep(1.5)  # a heartbeat or two
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    storage = open_storage(url)
    assert [t.state.name for t in optuna.load_study(study_name="k", storage=storage).trials] == ["RUNNING"]
    time.sleep(2.5)  # past the grace period: the dead worker's trial is stale
    result = run_config(cfg, storage=url, study_name="k")
    trials = result.study.trials
    assert trials[0].state.name == "FAIL"  # marked failed through the heartbeat
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params  # re-enqueued with the same params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3


# ------------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port (initdb into a temp dir, stopped after)."""
    from tests._postgres import throwaway_postgres

    with throwaway_postgres() as url:
        if url is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `.ci/run` installs Debian's postgresql")
        yield url


@pytest.mark.slow
def test_postgresql_storage_runs_and_resumes(postgres_url, tmp_path):
    from lightning_nas.data import DigitsDataModule
    from lightning_nas.models import Classifier, DigitsCNN
    from lightning_nas.search import run

    def build(trial):
        return Classifier(DigitsCNN(trial.choice("width", [4, 8])), lr=trial.loguniform("lr", 1e-3, 3e-2))

    kw = dict(
        objectives={"val_acc": "maximize"},
        strategy="evolution",
        storage=postgres_url,
        study_name="pg",
        trainer_kwargs=dict(max_epochs=1, limit_train_batches=3, limit_val_batches=2),
        out_dir=tmp_path,
        summary=False,
        sampler_kwargs=dict(population_size=2, sample_size=2),
    )
    dm = DigitsDataModule(batch_size=64)
    run(build, dm, n_trials=2, seed=0, **kw)
    res = run(build, dm, n_trials=4, seed=1, **kw)  # a second process would do the same: resume from the server
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        study = optuna.load_study(study_name="pg", storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
        assert study.user_attrs["objectives"] == {"val_acc": "maximize"}
        assert res.best_trials[0].value == max(t.value for t in study.trials)
    finally:
        storage.engine.dispose()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_reports_bad_storage_and_config_in_one_line(tmp_path, capsys):
    from lightning_nas.cli import main

    cfg = multitrial_config(tmp_path, n_trials=1)
    from tests._postgres import free_port

    port = free_port()
    assert main(["search", "--config", str(cfg), "--storage", f"postgresql://u:pw@127.0.0.1:{port}/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-nas search: error: storage") and "unreachable" in err and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text() + "stratgy: tpe\n")
    assert main(["search", "--config", str(bad)]) == 2
    assert "unknown key(s) ['stratgy']" in capsys.readouterr().err
