"""A missing optional dependency (an extra in pyproject.toml) is one line naming the `pip install` that adds it.

Each test hides the dependency with ``sys.modules[name] = None``, which makes ``import name`` fail as if it were
not installed.
"""

import sys

import pytest

from lightning_nas._optional import MissingExtraError, require


def _hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn"])
def test_serve_command_without_the_serve_extra(monkeypatch, capsys, tmp_path, missing):
    from lightning_nas.cli import main

    _hide(monkeypatch, missing)
    assert main(["serve", str(tmp_path / "no-bundle")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err == (
        f"lightning-nas serve: serving over HTTP needs {missing}, which is not installed: "
        'pip install "lightning-nas[serve]"\n'
    )


def test_serve_functions_without_the_serve_extra(monkeypatch):
    from lightning_nas.deploy import serve

    _hide(monkeypatch, "fastapi", "uvicorn")
    for call in (lambda: serve.create_app("no-bundle"), lambda: serve.serve("no-bundle")):
        with pytest.raises(ImportError, match=r'pip install "lightning-nas\[serve\]"') as info:
            call()
        assert isinstance(info.value, MissingExtraError) and "\n" not in str(info.value)


def test_postgres_storage_without_the_postgres_extra(monkeypatch):
    from lightning_nas.search.multitrial import open_storage

    _hide(monkeypatch, "psycopg")
    for url in (
        "postgresql://user:secret@127.0.0.1:9/db",
        "postgres://user:secret@127.0.0.1:9/db",
        "postgresql+psycopg://user:secret@127.0.0.1:9/db",
    ):
        with pytest.raises(
            MissingExtraError,
            match=r"needs psycopg, which is not installed: "
            r'pip install "lightning-nas\[postgres\]"',
        ) as info:
            open_storage(url)
        assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_search_command_with_a_postgres_url_without_the_postgres_extra(monkeypatch, capsys, tmp_path):
    from lightning_nas.cli import main

    (tmp_path / "build.py").write_text("def build(trial):\n    raise AssertionError('never built')\n")
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"build: {tmp_path / 'build.py'}:build\nobjectives: {{val_acc: maximize}}\nn_trials: 1\n"
        f"out_dir: {tmp_path / 'out'}\n"
    )
    _hide(monkeypatch, "psycopg")
    assert main(["search", "--config", str(cfg), "--storage", "postgresql://u:secret@127.0.0.1:9/db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "lightning-nas[postgres]"' in err and "secret" not in err, err


def test_require_returns_the_module_and_keeps_other_import_errors(monkeypatch, tmp_path):
    import json

    assert require("json", extra="x", feature="f") is json
    _hide(monkeypatch, "json")
    with pytest.raises(
        MissingExtraError, match=r'^f needs json, which is not installed: pip install "lightning-nas\[x\]"$'
    ):
        require("json", extra="x", feature="f")
    # an installed package whose own import fails (a broken dependency of it) is not a missing extra
    (tmp_path / "lnas_broken_pkg").mkdir()
    (tmp_path / "lnas_broken_pkg" / "__init__.py").write_text("import lnas_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="lnas_no_such_dependency") as info:
        require("lnas_broken_pkg", extra="x", feature="f")
    assert not isinstance(info.value, MissingExtraError)
