"""Issue 18, text: the WordNet gloss DataModule, the text CNN, token attributions in the report, the text demo."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_nas.data.text import CLASS_NAMES, WORDNET_DIR, TextDataModule, WordVocabulary, tokenize
from lightning_nas.models import Classifier, TextCNN
from tests.helpers import fast_trainer

needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason="WordNet 3.0 is not installed: `apt-get install wordnet-base` (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def small_text():
    dm = TextDataModule(batch_size=64, max_samples=3000, seed=0)
    dm.setup()
    return dm


def test_tokenizer_and_vocabulary():
    assert tokenize("Don't STOP; the 3 dogs' \"barking\"") == ["don", "t", "stop", "the", "3", "dogs", "barking"]
    v = WordVocabulary(["a dog", "a cat", "a dog barks"], min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a", "dog"] and len(v) == 4
    assert v.encode("A dog meows loudly", 6) == [2, 3, 1, 1, 0, 0]  # unknown words -> 1, padding -> 0
    assert v.encode("a a a a a a a a", 3) == [2, 2, 2]  # cut at max_len
    assert v.decode([2, 3, 1, 0, 0]) == ["a", "dog", "<unk>"]


def test_missing_wordnet_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        TextDataModule(root=tmp_path).setup()
    with pytest.raises(ValueError, match="max_samples"):
        TextDataModule(max_samples=5)


@needs_wordnet
def test_datamodule_splits_are_fixed_and_real(small_text):
    dm = small_text
    sizes = {n: len(dm.split(n)) for n in ("train", "val", "test")}
    assert sum(sizes.values()) == 3000 and sizes["val"] == sizes["test"] == 300
    x, y = dm.split("train").tensors
    assert x.dtype == torch.int64 and x.shape[1] == 32 and y.min() >= 0 and y.max() < len(CLASS_NAMES) == 26
    assert len(torch.unique(y)) >= 20  # stratified: (almost) every lexicographer class is there
    assert (x[:, 0] > 1).float().mean() > 0.8  # glosses start with a known word
    # the vocabulary comes from the training split only
    train_words = {w for t in dm.texts("train") for w in tokenize(t)}
    assert set(dm.vocab.itos[2:]) <= train_words
    again = TextDataModule(batch_size=64, max_samples=3000, seed=0)
    assert torch.equal(again.split("test").tensors[0], dm.split("test").tensors[0])
    assert again.texts("val") == dm.texts("val")
    other = TextDataModule(batch_size=64, max_samples=3000, seed=1)
    assert other.texts("test") != dm.texts("test")
    assert dm.example_input(4).shape == (4, 32)
    # a gloss and its class, as WordNet has them
    texts, labels, lemmas = __import__("lightning_nas.data.text", fromlist=["x"]).load_wordnet_nouns()
    i = lemmas.index("dog")
    assert CLASS_NAMES[labels[i]] == "noun.animal" and "canis" in texts[i].lower()
    assert len(texts) > 80_000


def test_text_cnn_shapes_and_validation():
    net = TextCNN(100, num_classes=26, embed_dim=8, channels=16, kernel_size=5)
    ids = torch.randint(0, 100, (3, 32))
    assert net(ids).shape == (3, 26)
    assert net.embedding.weight[0].abs().sum() == 0  # padding embeds to zero
    with pytest.raises(ValueError, match="kernel_size"):
        TextCNN(100, kernel_size=4)


def test_lowrank_factorizes_conv1d_exactly_at_full_rank():
    from lightning_nas.compress.lowrank import factorize

    torch.manual_seed(0)
    net = TextCNN(50, num_classes=5, embed_dim=8, channels=12, kernel_size=3).eval()
    ids = torch.randint(0, 50, (4, 10))
    before = net(ids)
    rep = factorize(net, ranks={"features.0": 12, "features.3": 12})
    assert {r.kind for r in rep} == {"conv1d"} and isinstance(net.features[0], nn.Sequential)
    assert isinstance(net.features[0][1], nn.Conv1d) and net.features[0][1].kernel_size == (1,)
    torch.testing.assert_close(net(ids), before, atol=1e-4, rtol=1e-4)


@needs_wordnet
def test_attribution_monitor_logs_words_for_token_inputs(small_text, tmp_path):
    from lightning_nas.callbacks import AttributionMonitor
    from lightning_nas.tracking import Tracker

    torch.manual_seed(0)
    dm = small_text
    cb = AttributionMonitor(n_samples=6, n_steps=2, vocabulary=dm.vocab.itos, class_names=dm.class_names)
    module = Classifier(TextCNN(dm.vocab_size, 26, 8, 16), lr=3e-3)
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2, callbacks=[cb])
    trainer.fit(module, datamodule=dm)
    tables = Tracker.from_trainer(trainer).files_dir / "tables"
    table = json.loads((tables / "explain_attribution_tokens.jsonl").read_text().splitlines()[-1])
    assert table["columns"] == ["sample", "label", "pred", "position", "token", "attribution"]
    words = {r[4] for r in table["rows"]}
    assert words & set(dm.vocab.itos[2:50]) and "<pad>" not in words  # real words, padding left out
    assert {r[1] for r in table["rows"]} <= set(CLASS_NAMES)
    with pytest.raises(TypeError, match="vocabulary"):
        AttributionMonitor(vocabulary="abc")


def _token_sink(tmp_path, rows):
    sink = tmp_path / "run" / "nas_files"
    (sink / "tables").mkdir(parents=True)
    cols = ["sample", "label", "pred", "position", "token", "attribution"]
    (sink / "tables" / "t.jsonl").write_text(json.dumps({"step": 3, "columns": cols, "rows": rows}) + "\n")
    (sink / "index.jsonl").write_text(
        json.dumps({"kind": "table", "key": "explain/attribution/tokens", "step": 3, "file": "tables/t.jsonl"}) + "\n"
    )
    (sink / "scalars.jsonl").write_text("")
    return sink


def test_report_draws_token_tables_as_escaped_highlighted_text(tmp_path):
    from lightning_nas.explain._attribution_utils import TOKEN_COLUMNS
    from lightning_nas.report import build_report
    from lightning_nas.report.html import _TOKEN_COLUMNS

    assert list(TOKEN_COLUMNS) == _TOKEN_COLUMNS
    xss = '<script>alert("x")</script>'
    rows = [
        [0, "noun.animal", "noun.animal", 1, "dog", 0.9],
        [0, "noun.animal", "noun.animal", 0, "a", -0.3],
        [0, "noun.animal", "noun.animal", 2, xss, "nan"],
        [1, xss, "noun.food", 0, 'x" onmouseover="alert(1)', 1e308],
        ["bad row"],
    ]
    page = build_report(_token_sink(tmp_path, rows), tmp_path / "r.html").read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page and 'onmouseover="' not in page
    first = re.search(r'<p class="toks">.*?</p>', page).group(0)
    assert first.index(">a<") < first.index(">dog<")  # in sentence order
    assert "rgba(214,39,40,0.750)" in first and "rgba(31,119,180,0.250)" in first  # red for, blue against
    assert page.count('<p class="toks">') == 2 and "✗" in page  # sample 1 is misclassified


@pytest.mark.slow
def test_token_view_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not found: install Debian's chromium (.ci/run does) to check the page in a browser")
    from lightning_nas.report import build_report

    words = "a domestic animal that barks and guards the house".split()
    rows = [
        [s, "noun.animal", "noun.animal", t, w, (1.0 if t % 2 else -1.0)] for s in range(3) for t, w in enumerate(words)
    ]
    page = build_report(_token_sink(tmp_path, rows), tmp_path / "tokens.html", title="Token view")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('class="tok"') == 3 * len(words) and ">barks</span>" in dom
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    red = ((img[..., 0] > 0.75) & (img[..., 1] < 0.55) & (img[..., 2] < 0.55)).mean()
    blue = ((img[..., 2] > 0.6) & (img[..., 0] < 0.45)).mean()
    assert red > 0.001 and blue > 0.001, (red, blue)  # the highlights are painted, both colours


def test_cli_offers_the_tasks():
    from lightning_nas import demo
    from lightning_nas._demo_tasks import STAGE_NAMES, TASKS, Task
    from lightning_nas.cli import main

    assert {"digits", "text"} <= set(TASKS) and tuple(demo.STAGES) == STAGE_NAMES
    assert TASKS["digits"].stages == (
        "search",
        "multitrial",
        "train",
        "explain",
        "distill",
        "prune",
        "quantize",
        "bundle",
    )
    bad = dict(name="x", help="", datamodule=None, model=None, search_space=None, student=None, input_spec=None)
    with pytest.raises(ValueError, match="embedding"):
        Task(**bad, attribution="tokens")
    with pytest.raises(ValueError, match="stages"):
        Task(**bad, stages=("train", "nope"))
    with pytest.raises(SystemExit):
        main(["demo", "--task", "no-such-task"])
    with pytest.raises(SystemExit, match="threads"):
        main(["demo", "--task", "text", "--threads", "0"])


@needs_wordnet
@pytest.mark.slow
def test_text_demo_end_to_end(tmp_path, monkeypatch):
    """The text demo's stages on 4,000 synsets, one epoch each: the stage table, drift, token views, the card."""
    from lightning_nas import _demo_tasks as T
    from lightning_nas import demo as D

    small = dataclasses.replace(T.TEXT, datamodule=lambda seed: T._text_datamodule(seed, 4000))
    monkeypatch.setitem(D.TASKS, "text", small)
    threads = torch.get_num_threads()
    res = D.run_demo(max_epochs=1, out_dir=tmp_path / "demo", task="text")
    assert torch.get_num_threads() == threads  # the task's one thread is for the run only
    rows = {r["stage"]: r for r in res["rows"]}
    assert list(rows) == [s for s in T.TEXT.stages if s != "multitrial"]  # multitrial tunes, it adds no row
    assert res["arch"]["conv1"] in {f"k{k}" for k in T.TEXT_KERNELS}
    assert rows["distill"]["params"] < rows["explain"]["params"]  # a real student: half the embedding
    assert rows["prune"]["params"] < rows["distill"]["params"] and rows["lowrank"]["params"] < rows["prune"]["params"]
    # the int8 model runs in ONNX Runtime; it is barely smaller: its float embedding is most of its parameters
    assert rows["quantize"]["onnx_latency_ms"] is not None and (tmp_path / "demo" / "model_int8.onnx").is_file()
    for stage in ("distill", "prune", "lowrank", "quantize"):
        assert -1.0 <= rows[stage]["attr_rho"] <= 1.0, stage
    assert rows["explain"]["test_acc"] > 1.5 / 26  # better than chance after a few epochs on 3,200 glosses
    card = json.loads(Path(res["card"]).read_text())
    assert card["input_spec"]["dtype"] == "int64"
    assert {s["stage"] for s in card["stages"] if "attribution_drift" in s} == {
        "distill",
        "prune",
        "lowrank",
        "quantize",
    }
    html = Path(res["report"]).read_text()
    assert html.count('<p class="toks">') >= 20 and "explain/attribution/tokens/stages" in html
    for stage in ("explain", "distill", "prune", "lowrank", "quantize"):  # each probe sentence at every stage
        assert f"#0 {stage} label" in html, stage
    assert "explain/attribution/drift" in html and "search/trials" in html
    assert np.isfinite(res["seconds"])
