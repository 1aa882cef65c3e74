"""A storage that cannot be written is one line naming the cause, and exit code 2 (issue 15, item 8)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import optuna
import pytest

from lightning_nas.cli import main
from lightning_nas.data import DigitsDataModule
from lightning_nas.search.multitrial import StorageUnreachableError, run
from tests.helpers import multitrial_config

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_read_only_sqlite_is_one_line(tmp_path, capsys):
    db = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="old")  # tables exist; the file is then read-only
    cfg = multitrial_config(tmp_path, n_trials=1)
    # SQLite's own read-only mode: the same refusal as a read-only file, also for root (who ignores file modes)
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    for study in ("new", "old"):
        assert main(["search", "--config", str(cfg), "--storage", url, "--study", study]) == 2
        line = _one_line(capsys)
        assert line.startswith("lightning-nas search: error: storage") and "readonly database" in line, line
        assert "exceeding max length" not in line
    if os.geteuid() != 0:  # a plain read-only file (file modes do not bind root)
        db.chmod(0o444)
        assert main(["search", "--config", str(cfg), "--storage", f"sqlite:///{db}", "--study", "new"]) == 2
        assert "readonly database" in _one_line(capsys)


def test_unwritable_journal_is_one_line(tmp_path, capsys, monkeypatch):
    from optuna.storages.journal import JournalFileBackend

    log = tmp_path / "study.log"
    optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(log))), study_name="old")

    def refuse(self, logs):
        raise PermissionError(errno.EACCES, "Permission denied", self._file_path)

    with monkeypatch.context() as m:
        m.setattr(JournalFileBackend, "append_logs", refuse)
        with pytest.raises(StorageUnreachableError, match="Permission denied") as err:
            run(
                lambda t: None,
                DigitsDataModule(),
                objectives={"val_acc": "max"},
                n_trials=1,
                storage=f"journal://{log}",
                out_dir=tmp_path,
            )
        assert "\n" not in str(err.value) and str(log) in str(err.value)
    cfg = multitrial_config(tmp_path, n_trials=1)
    if os.geteuid() != 0:
        log.chmod(0o444)
    elif not (
        shutil.which("chattr") and subprocess.run(["chattr", "+i", str(log)], capture_output=True).returncode == 0
    ):
        pytest.skip("running as root without chattr: a journal file cannot be made read-only for this process")
    try:
        assert main(["search", "--config", str(cfg), "--storage", f"journal://{log}", "--study", "old"]) == 2
        line = _one_line(capsys)
        assert line.startswith("lightning-nas search: error: storage") and str(log) in line, line
        assert "not permitted" in line or "Permission denied" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(log)], capture_output=True)


def test_user_errors_are_not_mistaken_for_storage_errors(tmp_path):
    """An OSError raised by the user's own build code is theirs: it is not reworded as a storage problem."""

    def build(trial):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "my_data.csv")

    with pytest.raises(FileNotFoundError, match="my_data.csv"):
        run(
            build,
            DigitsDataModule(),
            objectives={"val_acc": "max"},
            n_trials=1,
            out_dir=tmp_path,
            storage=f"sqlite:///{tmp_path / 'ok.db'}",
        )
