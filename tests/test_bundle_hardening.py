"""Bundles from elsewhere and careless overwrites (issue 15, items 5 and 6): ``bundle(overwrite=True)`` only
replaces a bundle and never loses the old one on failure; ``load_bundle`` validates the card against a schema,
refuses names outside the folder, and serves exactly the bytes whose hash it checked."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_nas.cli import main
from lightning_nas.deploy import BundleError, bundle, load_bundle
from lightning_nas.deploy.bundle import BUNDLE_FILES, validate_card
from tests.helpers import trained_digits_cnn


@pytest.fixture(scope="module")
def nets():
    return trained_digits_cnn(epochs=1, seed=0), trained_digits_cnn(epochs=1, seed=1)


@pytest.fixture(scope="module")
def made(nets, tmp_path_factory):
    """Two bundles of two different models (the second supplies 'swapped' files)."""
    (net, dm), (net2, _) = nets
    root = tmp_path_factory.mktemp("bundles")
    ref = dm.split("train").tensors[0]
    return (
        bundle(net, dm.example_input(4), root / "a", reference_data=ref),
        bundle(net2, dm.example_input(4), root / "b", reference_data=ref.flip(0)),
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_card(b: Path, card_text: str | bytes) -> None:
    """Write a new card and record its hash in the manifest, as someone crafting a bundle would."""
    data = card_text.encode() if isinstance(card_text, str) else card_text
    (b / "card.json").write_bytes(data)
    lines = [ln for ln in (b / "bundle.sha256").read_text().splitlines() if not ln.endswith("  card.json")]
    lines.append(f"{hashlib.sha256(data).hexdigest()}  card.json")
    (b / "bundle.sha256").write_text("\n".join(lines) + "\n")


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


# ------------------------------------------------------------------------------------------- item 6: TOCTOU
def test_loaded_bundle_uses_the_bytes_whose_hash_was_checked(nets, made, tmp_path):
    (net, dm), (net2, _) = nets
    b_dir = _copy(made[0], tmp_path / "a")
    b = load_bundle(b_dir)
    for f in ("model.ts", "model.onnx", "profile.json"):  # swapped after the check, e.g. while serving
        shutil.copyfile(made[1] / f, b_dir / f)
    x = dm.split("test").tensors[0][:32]
    with torch.no_grad():
        want, other = net(x).numpy(), net2(x).numpy()
    assert not np.allclose(want, other, atol=1e-3)
    with torch.no_grad():
        np.testing.assert_allclose(b.torchscript()(x).numpy(), want, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(b.session().run(None, {"input": x.numpy()})[0], want, atol=1e-4, rtol=1e-3)
    assert b.profile().data == json.loads((made[0] / "profile.json").read_text())
    with pytest.raises(BundleError, match="does not match its recorded sha256"):
        load_bundle(b_dir)  # a fresh load sees the swap


def test_card_file_names_cannot_leave_the_folder(made, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a system file")
    b = _copy(made[0], tmp_path / "inner" / "b")
    card = json.loads((b / "card.json").read_text())
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    for name in ("../../secret.txt", str(secret)):
        c = copy.deepcopy(card)
        c["bundle"]["files"][name] = {"sha256": digest, "bytes": secret.stat().st_size}
        _rewrite_card(b, json.dumps(c))
        with (b / "bundle.sha256").open("a") as f:
            f.write(f"{digest}  {name}\n")
        with pytest.raises(BundleError, match="bundle.files"):
            load_bundle(b)
    (b / "model.ts").unlink()  # a symlink to a file outside, with that file's real hash: refused too
    (b / "model.ts").symlink_to(secret)
    c = copy.deepcopy(card)
    c["bundle"]["files"]["model.ts"]["sha256"] = digest
    _rewrite_card(b, json.dumps(c))
    text = (b / "bundle.sha256").read_text().replace(card["bundle"]["files"]["model.ts"]["sha256"], digest)
    (b / "bundle.sha256").write_text(text)
    with pytest.raises(BundleError, match="outside"):
        load_bundle(b)


def _mutations(card: dict) -> list[tuple[str, object]]:
    out = []

    def put(desc, fn):
        c = copy.deepcopy(card)
        fn(c)
        out.append((desc, c))

    put("num_classes as a string", lambda c: c["bundle"]["output"].__setitem__("num_classes", "10"))
    put("no output.kind", lambda c: c["bundle"]["output"].pop("kind"))
    put("fewer class_names", lambda c: c["bundle"]["output"].__setitem__("class_names", ["zero", "one"]))
    put("class_names not strings", lambda c: c["bundle"]["output"].__setitem__("class_names", list(range(10))))
    put("shape with a string", lambda c: c["input_spec"].__setitem__("shape", ["batch", "8", 8]))
    put("shape zero", lambda c: c["input_spec"].__setitem__("shape", ["batch", 0]))
    put("shape absurd", lambda c: c["input_spec"].__setitem__("shape", ["batch", 10**6, 10**6]))
    put("files not a dict", lambda c: c["bundle"].__setitem__("files", ["model.onnx"]))
    put("sha256 not hex", lambda c: c["bundle"]["files"]["model.onnx"].__setitem__("sha256", "x" * 64))
    put("name a number", lambda c: c.__setitem__("name", 5))
    put("input_spec missing", lambda c: c.pop("input_spec"))
    return out


def test_malformed_cards_are_one_line_bundle_errors(made, tmp_path, capsys):
    b = _copy(made[0], tmp_path / "b")
    card = json.loads((b / "card.json").read_text())
    cases = [(d, json.dumps(c)) for d, c in _mutations(card)] + [
        ("100k nested [", "[" * 100_000),
        ("not UTF-8", b"\xff\xfe{"),
        ("a list", "[1, 2]"),
    ]
    for desc, text in cases:
        _rewrite_card(b, text)
        with pytest.raises(BundleError) as err:
            load_bundle(b)
        assert "\n" not in str(err.value), desc
        assert main(["serve", str(b)]) == 2, desc
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lightning-nas serve: "), (desc, lines)


def test_profile_and_model_that_disagree_with_the_card_are_refused(made, tmp_path):
    b = _copy(made[0], tmp_path / "b")
    prof = json.loads((b / "profile.json").read_text())
    prof["prediction"] = {"num_classes": 3, "fractions": [0.2, 0.3, 0.5]}
    data = json.dumps(prof).encode()
    (b / "profile.json").write_bytes(data)
    card = json.loads((b / "card.json").read_text())
    old = card["bundle"]["files"]["profile.json"]["sha256"]
    card["bundle"]["files"]["profile.json"]["sha256"] = hashlib.sha256(data).hexdigest()
    _rewrite_card(b, json.dumps(card))
    (b / "bundle.sha256").write_text(
        (b / "bundle.sha256").read_text().replace(old, card["bundle"]["files"]["profile.json"]["sha256"])
    )
    with pytest.raises(BundleError, match="profile.json has 3 classes"):
        load_bundle(b)
    b2 = _copy(made[0], tmp_path / "b2")  # a card claiming another input shape: refused when served
    card = json.loads((b2 / "card.json").read_text())
    card["input_spec"]["shape"] = ["batch", 1, 4, 4]
    _rewrite_card(b2, json.dumps(card))
    from lightning_nas.deploy.serve import create_app

    with pytest.raises(BundleError, match=r"(input shape|profile\.json is for inputs)"):
        create_app(load_bundle(b2))


# ------------------------------------------------------------------------------------------- Hypothesis: schema
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["batch", "logits", "probabilities", "model.onnx", "../x", "/etc/x"]),
)
_json = st.recursive(
    _json_leaf, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=6), k, max_size=3), max_leaves=12
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def valid_card(made):
    return json.loads((made[0] / "card.json").read_text())


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_card_schema_property(valid_card, data):
    """Any change anywhere in a valid card: either still valid, and then everything the server reads from it is
    well typed and names only bundle files, or a one-line BundleError; never another exception."""
    card = copy.deepcopy(valid_card)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(card)]
        path = data.draw(st.sampled_from(paths))
        value = data.draw(_json)
        if not path:
            card = value
            continue
        parent = card
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1])
        else:
            parent[path[-1]] = value
    try:
        validate_card(card)
    except BundleError as exc:
        assert "\n" not in str(exc)
        return
    meta = card["bundle"]
    assert set(meta["files"]) <= set(BUNDLE_FILES) and "model.onnx" in meta["files"]
    shape = card["input_spec"]["shape"]
    assert shape[0] == "batch" and all(type(d) is int and d > 0 for d in shape[1:])
    out = meta["output"]
    assert out["kind"] in ("logits", "probabilities") and type(out["num_classes"]) is int
    names = out.get("class_names")
    assert names is None or (len(names) == out["num_classes"] and all(type(n) is str for n in names))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(value=_json, key=st.sampled_from(["name", "input_spec", "bundle", "stages", "metrics"]))
def test_load_bundle_property(made, key, value):
    """End to end through load_bundle (card rehashed into the manifest): a Bundle or a BundleError, nothing else."""
    with tempfile.TemporaryDirectory() as d:
        b = _copy(made[0], Path(d) / "b")
        card = json.loads((b / "card.json").read_text())
        card[key] = value
        _rewrite_card(b, json.dumps(card))
        try:
            got = load_bundle(b)
        except BundleError as exc:
            assert "\n" not in str(exc)
        else:
            assert got.num_classes == 10 and got.input_shape == (1, 8, 8)


def test_reference_profile_file_from_elsewhere_is_a_value_error(made, tmp_path):
    """DriftMonitor(reference="profile.json") reads a profile file directly: malformed ones are ValueErrors."""
    from lightning_nas.deploy import ReferenceProfile

    good = json.loads((made[0] / "profile.json").read_text())
    bad_values = {"sample": [["a"] * 64] * 3, "input_shape": [10**6, 10**6], "features": "x", "prediction": 5}
    for key, value in bad_values.items():
        (tmp_path / "p.json").write_text(json.dumps(dict(good, **{key: value})))
        with pytest.raises(ValueError, match="reference profile"):
            ReferenceProfile.load(tmp_path / "p.json")
    for raw in (b"[" * 100_000, b"\xff\xfe{"):
        (tmp_path / "p.json").write_bytes(raw)
        with pytest.raises(ValueError, match="not valid JSON"):
            ReferenceProfile.load(tmp_path / "p.json")
