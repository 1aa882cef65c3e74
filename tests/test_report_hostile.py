"""A run folder from elsewhere cannot turn the report against its reader (issue 15, items 3 and 4): only real
PNG/JPEG files inside the run folder are embedded, every value is escaped, odd but legal data is rendered or
named as skipped, and the CLI fails with one line and exit code 2."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_nas.cli import main
from lightning_nas.report import build_report, load_run, render

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201b2"
    "a9d1d60000000049454e44ae426082"
)  # a 1x1 RGBA PNG
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"\x00" * 32 + b"\xff\xd9"
XSS = '<script>alert("x")</script>'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sink(root: Path, index: list, scalars: list | None = None, files: dict | None = None) -> Path:
    sink = root / "run" / "nas_files"
    sink.mkdir(parents=True)
    (sink / "index.jsonl").write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in index))
    (sink / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scalars or []))
    for rel, data in (files or {}).items():
        (sink / rel).parent.mkdir(parents=True, exist_ok=True)
        (sink / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    return sink


# ------------------------------------------------------------------------------------------- item 3
def test_files_outside_the_run_folder_are_never_embedded(tmp_path):
    secret = tmp_path / "secret.png"  # a real PNG, outside the run folder
    secret.write_bytes(PNG + b"SECRET")
    sink = _sink(
        tmp_path,
        [],
        files={"images/ok-0.png": PNG, "images/fake-0.png": b"just text, not an image", "images/photo-0.jpg": JPEG},
    )
    (sink / "images" / "link-0.png").symlink_to(secret)
    index = [
        {"kind": "image", "key": "up", "step": 0, "file": "../../secret.png"},
        {"kind": "image", "key": "abs", "step": 0, "file": str(secret)},
        {"kind": "image", "key": "link", "step": 0, "file": "images/link-0.png"},
        {"kind": "image", "key": "fake", "step": 0, "file": "images/fake-0.png"},
        {"kind": "image", "key": "ok", "step": 0, "file": "images/ok-0.png"},
        {"kind": "image", "key": "photo", "step": 0, "file": "images/photo-0.jpg"},
        {"kind": "table", "key": "t", "step": 0, "file": "../../secret.png"},
        {"kind": "series", "key": "s", "step": 0, "file": "/etc/hostname"},
    ]
    (sink / "index.jsonl").write_text("".join(json.dumps(e) + "\n" for e in index))
    page = build_report(sink, tmp_path / "r.html").read_text()
    assert _b64(PNG + b"SECRET") not in page and _b64(b"just text, not an image") not in page
    assert _b64(PNG) in page and f"data:image/jpeg;base64,{_b64(JPEG)}" in page
    data = load_run(sink)
    assert set(data.images) == {"ok", "photo"}
    for what in ("../../secret.png", str(secret), "images/link-0.png", "images/fake-0.png", "/etc/hostname"):
        assert any(what in s for s in data.skipped), (what, data.skipped)
    assert "Not shown" in page


def test_every_value_from_a_run_is_escaped(tmp_path):
    table = {"step": XSS, "columns": [XSS, "b"], "rows": [[XSS, 1.5]]}
    sink = _sink(
        tmp_path,
        [
            {"kind": "table", "key": f"t/{XSS}", "step": 0, "file": "tables/t.jsonl"},
            {"kind": "series", "key": "s", "step": 0, "file": "series/s.json"},
        ],
        scalars=[{"step": 0, f"k/{XSS}": 1.0}],
        files={
            "tables/t.jsonl": json.dumps(table) + "\n",
            "series/s.json": json.dumps({"xs": [0, 1], "ys": {XSS: [1, 2]}, "title": XSS, "step": XSS}),
            "summary.json": json.dumps({XSS: XSS, "n": 1}),
        },
    )
    page = build_report(sink, tmp_path / "r.html", title=XSS).read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page


@pytest.fixture(scope="module")
def hostile_wandb_run(tmp_path_factory):
    """A real W&B offline run whose history names files outside its folder, and keys with mathtext."""
    import wandb

    root = tmp_path_factory.mktemp("wb")
    secret = root / "secret.png"
    secret.write_bytes(PNG + b"WANDB-SECRET")
    run = wandb.init(mode="offline", dir=str(root), project="hostile")
    run.log(
        {
            "abs": {"_type": "image-file", "path": str(secret), "width": 1, "height": 1},
            "up": {"_type": "image-file", "path": "../../../secret.png"},
            "tab": {"_type": "table-file", "path": "../../../secret.png"},
            "loss/$\\alpha$": 1.0,
            "cost $x": 2.0,
            f"m/{XSS}": 3.0,
        }
    )
    run.log({"loss/$\\alpha$": 0.5, "cost $x": 1.0, f"m/{XSS}": 2.0})
    run.config.update({"lr": XSS})
    run_dir = Path(run.dir).parent
    wandb.finish()
    return root, run_dir, secret


def test_wandb_history_cannot_embed_local_files(hostile_wandb_run, tmp_path):
    root, run_dir, secret = hostile_wandb_run
    data = load_run(run_dir)
    assert not data.images and "tab" not in data.tables
    assert any(str(secret) in s for s in data.skipped) and any("../../../secret.png" in s for s in data.skipped)
    page = build_report(run_dir, tmp_path / "w.html").read_text()
    assert _b64(PNG + b"WANDB-SECRET") not in page and "<script" not in page.lower()


# ------------------------------------------------------------------------------------------- item 4
def test_mathtext_keys_and_odd_index_entries_still_render(hostile_wandb_run, tmp_path):
    _, run_dir, _ = hostile_wandb_run
    page = build_report(run_dir, tmp_path / "m.html").read_text()  # matplotlib used to abort on "$\alpha$"
    assert "loss/$\\alpha$" in page and "cost $x" in page and page.count("data:image/png;base64,") >= 2
    sink = _sink(
        tmp_path,
        [
            "not json at all",
            "[1, 2]",
            "7",
            {"kind": "image", "key": "nofile", "step": 0},  # no "file": was a KeyError
            {"kind": "image", "key": "badstep", "step": "abc", "file": "images/a.png"},
            {"key": "nokind", "file": "x"},
            {"kind": "table", "key": "rows-not-lists", "step": 0, "file": "tables/r.jsonl"},
            {"kind": "histogram", "key": "h", "step": 0, "file": "histograms/h.jsonl"},
        ],
        scalars=[
            {"step": "x", "a": 1.0},
            {"step": 1, "b/$\\frac{": 2.0, "c": float("inf")},
            {"step": 2, "b/$\\frac{": 3.0, "c": 1.0},
        ],
        files={
            "images/a.png": PNG,
            "tables/r.jsonl": json.dumps({"step": 0, "columns": 3, "rows": 5}),
            "histograms/h.jsonl": json.dumps({"step": 0, "counts": [1, 2], "edges": [0, 1]}),
            "summary.json": "[1, 2, 3]",
        },
    )
    data = load_run(sink)
    page = render(data)
    assert "b/$\\frac{" in page and "Not shown" in page
    for what in ("nofile", "badstep", "rows-not-lists", "summary.json", "histograms/h.jsonl"):
        assert any(what in s for s in data.skipped), (what, data.skipped)


def test_cli_report_errors_are_one_line_exit_2(hostile_wandb_run, tmp_path, capsys):
    _, run_dir, _ = hostile_wandb_run
    for argv in (
        ["report", str(run_dir), "-o", str(tmp_path)],  # -o is a directory: was a traceback
        ["report", str(tmp_path / "nope")],
        ["report", str(tmp_path)],
    ):  # a folder without any run
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lightning-nas report: error:"), err
    assert main(["report", str(run_dir), "-o", str(tmp_path / "ok.html")]) == 0
    out = capsys.readouterr()
    assert "ok.html" in out.out and "skipped" in out.err


# ------------------------------------------------------------------------------------------- Hypothesis
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=8))
_value = st.recursive(
    _scalar, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=5), k, max_size=3), max_leaves=8
)
_key = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["nas/b/c", "prune/l/sparsity", "$x$", "a/$\\frac{", XSS, "explain/attribution/x", "dynamics/w/mean"]
    ),
)
_path = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "../outside.png",
            "/etc/hostname",
            "images/a.png",
            "",
            ".",
            "tables/t.jsonl",
            "series/s.json",
            "histograms/h.jsonl",
            "images",
            "images/../images/a.png",
            "link.png",
        ]
    ),
)
_entry = st.one_of(
    _value,
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["image", "table", "histogram", "series", "scalar", "other"]) | _scalar,
            "key": _key | _scalar,
            "step": st.integers(-5, 10**12) | _scalar,
            "file": _path | _scalar,
        }
    ),
)
_file_body = st.one_of(
    st.just(PNG),
    st.binary(max_size=40),
    _value.map(lambda v: json.dumps(v).encode()),
    st.lists(_value, max_size=3).map(lambda v: "\n".join(json.dumps(x) for x in v).encode()),
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    index=st.lists(_entry, max_size=6),
    scalars=st.lists(st.dictionaries(_key | st.just("step"), _scalar, max_size=4), max_size=4),
    bodies=st.dictionaries(
        st.sampled_from(
            ["images/a.png", "tables/t.jsonl", "series/s.json", "histograms/h.jsonl", "summary.json", "x.png"]
        ),
        _file_body,
        max_size=5,
    ),
)
def test_report_loader_property(index, scalars, bodies):
    """Any index/scalars/files in a run folder: the page renders, nothing outside the folder is embedded,
    and no value reaches the page unescaped."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "outside.png").write_bytes(PNG + b"OUTSIDE")
        sink = root / "run" / "nas_files"
        sink.mkdir(parents=True)
        (sink / "index.jsonl").write_text("".join(json.dumps(e) + "\n" for e in index))
        (sink / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scalars))
        for rel, body in bodies.items():
            (sink / rel).parent.mkdir(parents=True, exist_ok=True)
            (sink / rel).write_bytes(body)
        (sink / "link.png").symlink_to(root / "outside.png")
        data = load_run(sink)
        page = render(data)
        assert _b64(PNG + b"OUTSIDE") not in page
        assert "<script" not in page.lower()
        for _, p in (x for items in data.images.values() for x in items):
            assert sink.resolve() in Path(p).resolve().parents


def test_plots_skip_non_finite_points(tmp_path):
    sink = _sink(tmp_path, [], scalars=[{"step": i, "loss": v} for i, v in enumerate([1.0, np.inf, np.nan, 0.5])])
    page = render(load_run(sink))
    assert page.count("data:image/png;base64,") == 1


def test_a_corrupt_wandb_file_is_named_not_fatal(tmp_path):
    """A .wandb file with a valid header and checksum but a payload that is not a W&B record."""
    import struct
    import zlib

    sink = _sink(tmp_path, [], scalars=[{"step": 0, "loss": 1.0}])
    payload = b"\xff" * 20
    crc = zlib.crc32(payload, zlib.crc32(bytes([1]))) & 0xFFFFFFFF
    (tmp_path / "run-x.wandb").write_bytes(
        b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00" + struct.pack("<IHB", crc, len(payload), 1) + payload
    )
    data = load_run(sink)
    assert "loss" in data.scalars and any("is not a W&B record" in s for s in data.skipped), data.skipped
    assert "Not shown" in render(data)
