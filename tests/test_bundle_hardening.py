"""Careless overwrites (issue 15, item 5): ``bundle(overwrite=True)`` only replaces a bundle and never loses the
old one on failure."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightning_nas.deploy import bundle, load_bundle
from tests.test_bundle_helpers import trained_digits_cnn


@pytest.fixture(scope="module")
def nets():
    return trained_digits_cnn(epochs=1, seed=0), trained_digits_cnn(epochs=1, seed=1)


@pytest.fixture(scope="module")
def made(nets, tmp_path_factory):
    """Two bundles of two different models (the second supplies 'swapped' files)."""
    (net, dm), (net2, _) = nets
    root = tmp_path_factory.mktemp("bundles")
    ref = dm.split("train").tensors[0]
    return (bundle(net, dm.example_input(4), root / "a", reference_data=ref),
            bundle(net2, dm.example_input(4), root / "b", reference_data=ref.flip(0)))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------- item 5: overwrite
def test_overwrite_refuses_a_folder_that_is_not_a_bundle(nets, tmp_path, monkeypatch):
    (net, dm), _ = nets
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "train.py").write_text("print('my code')")
    (project / "src" / "model.py").write_text("x = 1")
    with pytest.raises(FileExistsError, match="not a bundle folder.*nothing was deleted"):
        bundle(net, dm.example_input(4), project, overwrite=True)
    assert (project / "train.py").read_text() == "print('my code')" and (project / "src" / "model.py").exists()
    monkeypatch.chdir(project)  # bundle(..., ".", overwrite=True) used to delete the current directory's files
    with pytest.raises(FileExistsError):
        bundle(net, dm.example_input(4), ".", overwrite=True)
    assert sorted(p.name for p in project.iterdir()) == ["src", "train.py"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a folder"):
        bundle(net, dm.example_input(4), a_file, overwrite=True)
    assert a_file.read_text() == "keep me"
    assert _siblings(project) == []  # no temporary folder left behind


def test_overwrite_keeps_the_old_bundle_until_the_new_one_is_complete(nets, made, tmp_path):
    (net, dm), _ = nets
    old = _copy(made[0], tmp_path / "served")
    card_before = (old / "card.json").read_bytes()
    with pytest.raises(ValueError, match="class_names"):  # fails late, after the models were exported
        bundle(net, dm.example_input(4), old, overwrite=True, class_names=["a", "b"])
    assert (old / "card.json").read_bytes() == card_before and load_bundle(old).num_classes == 10
    assert _siblings(old) == []
    (old / "notes.txt").write_text("mine")  # a bundle folder the user put a file into is not replaced either
    with pytest.raises(FileExistsError, match="notes.txt"):
        bundle(net, dm.example_input(4), old, overwrite=True)
    (old / "notes.txt").unlink()
    bundle(net, dm.example_input(4), old, overwrite=True, name="replaced")
    assert load_bundle(old).card["name"] == "replaced" and _siblings(old) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_bundle(bundle(net, dm.example_input(4), empty)).card["bundle"]["files"]
