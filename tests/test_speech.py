"""Spoken digits (espeak-ng): features, generation and its cache, the audio CNN and its search space, the spectrogram
attribution view (in the HTML report and in headless Chromium), and the speech pipeline end to end."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_nas import space
from lightning_nas.data import EspeakNotFoundError, SpokenDigitsDataModule, log_mel_spectrogram, mel_filterbank
from lightning_nas.data import speech as S
from lightning_nas.explain import attribution as A
from lightning_nas.models import AUDIO_KERNELS, AudioCNN, Classifier, audio_search_space
from tests.helpers import fast_trainer

ROOT = Path(__file__).resolve().parent.parent
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed: `apt-get install espeak-ng` (.ci/run installs it) to synthesize the digits",
)
TINY = {"voices": ("en-us", "en-gb"), "variants": ("m1", "f2"), "takes": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A 4-speaker, 40-clip data set generated once for this module."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: `apt-get install espeak-ng` (.ci/run installs it)")
    cache = tmp_path_factory.mktemp("spoken_digits")
    SpokenDigitsDataModule(cache_dir=cache, **TINY).setup()
    return cache


# ----------------------------------------------------------------------------------------------- features
def test_mel_filterbank_is_triangles_rising_and_falling_on_the_mel_scale():
    fb = mel_filterbank(201, 40, 16_000)
    assert fb.shape == (201, 40) and float(fb.min()) >= 0.0 and float(fb.max()) <= 1.0 + 1e-6
    peaks = fb.argmax(0)
    assert bool((peaks[1:] >= peaks[:-1]).all())  # band centres go up in frequency
    widths = (fb > 0).sum(0)
    assert widths[-1] > 4 * widths[0]  # mel bands widen with frequency
    assert bool((fb.sum(1)[5:195] > 0).all())  # every bin between the first and last centre is covered


def test_log_mel_of_a_tone_peaks_in_its_band_and_is_scaled_to_unit_range():
    t = torch.arange(16_000) / 16_000
    tone = torch.sin(2 * torch.pi * 1000 * t)
    x = log_mel_spectrogram(torch.stack([tone, 0.01 * tone]))
    assert x.shape == (2, 40, 51) and float(x.min()) >= 0.0 and float(x.max()) == pytest.approx(1.0)
    fb = mel_filterbank(201, 40, 16_000)
    band = int(fb[round(1000 / 8000 * 200)].argmax())  # the band whose filter holds the 1 kHz bin
    assert int(x[0, :, 25].argmax()) == band
    torch.testing.assert_close(x[0], x[1], atol=1e-4, rtol=0)  # relative to the clip's peak: gain does not matter


def test_split_words_cuts_at_pauses_and_refuses_a_wrong_count():
    rate = 22_050
    burst = (0.5 * (-1.0) ** np.arange(int(0.2 * rate))).astype(np.float32)
    gap = np.zeros(int(0.5 * rate), dtype=np.float32)
    short = np.zeros(int(0.05 * rate), dtype=np.float32)  # a stop closure inside a word
    x = np.concatenate([burst, short, burst, gap, burst, gap, burst])
    pieces = S._split_words(x, rate, 3)
    assert pieces is not None and [len(p) for p in pieces] == [2 * len(burst) + len(short), len(burst), len(burst)]
    assert S._split_words(x, rate, 4) is None and S._split_words(np.zeros(100, np.float32), rate, 1) is None


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"voices": "en-us"}, TypeError, "voices"),
        ({"voices": ("en-us", "en-us")}, ValueError, "duplicates"),
        ({"variants": ("m1+f1",)}, ValueError, "variants"),
        ({"voices": ("en-us",), "variants": ("m1", "m2")}, ValueError, "at least 3 speakers"),
        ({"takes": 0}, ValueError, "takes"),
        ({"speed_range": (200, 100)}, ValueError, "speed_range"),
        ({"pitch_range": (0, 120)}, ValueError, "pitch_range"),
        ({"snr_db": 10}, TypeError, "snr_db"),
        ({"test_fraction": 0.7}, ValueError, "test_fraction"),
        ({"n_jobs": 0}, ValueError, "n_jobs"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, err, match, tmp_path):
    with pytest.raises(err, match=match):
        SpokenDigitsDataModule(cache_dir=tmp_path, **kwargs)


def test_missing_espeak_is_a_clear_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    dm = SpokenDigitsDataModule(cache_dir=tmp_path / "cache", **TINY)
    with pytest.raises(EspeakNotFoundError, match=r"espeak-ng.*apt-get install espeak-ng"):
        dm.setup()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_default_cache_is_the_users_cache_folder_never_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = SpokenDigitsDataModule()
    assert dm.cache_path.parent == tmp_path / "xdg" / "lightning_nas" / "spoken_digits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert S.default_cache_dir() == Path.home() / ".cache" / "lightning_nas" / "spoken_digits"
    assert ROOT not in S.default_cache_dir().parents


# ----------------------------------------------------------------------------------------------- generation
@needs_espeak
def test_tiny_set_is_split_by_speaker_and_cached(tiny_cache, monkeypatch):
    dm = SpokenDigitsDataModule(cache_dir=tiny_cache, **TINY)
    calls = []
    monkeypatch.setattr(S, "_run", lambda cmd: calls.append(cmd) or pytest.fail(f"espeak-ng ran: {cmd}"))
    dm.setup()  # the module fixture generated it: this reads the cache
    assert calls == [] and dm.generation_seconds is None
    sizes = {s: len(dm.split(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 40 and sizes["val"] == 10 and sizes["test"] == 10  # one speaker each
    speakers = [set(dm.speakers[s]) for s in ("train", "val", "test")]
    assert set().union(*speakers) == {"en-us+m1", "en-us+f2", "en-gb+m1", "en-gb+f2"}
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    x, y = dm.split("test").tensors
    assert x.shape == (10, 1, 40, 51) and x.dtype == torch.float32 and sorted(y.tolist()) == list(range(10))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.amax((1, 2, 3)).min()) == 1.0
    assert dm.input_shape == (1, 40, 51) and dm.input_spec()["shape"] == ["batch", 1, 40, 51]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 40, 51) and yb.dtype == torch.int64


@needs_espeak
def test_generation_is_seeded_and_the_cache_key_follows_the_configuration(tiny_cache, tmp_path):
    fresh = SpokenDigitsDataModule(cache_dir=tmp_path, **TINY)
    fresh.setup()  # generated again, from scratch
    assert fresh.generation_seconds is not None and fresh.cache_path.is_file()
    cached = SpokenDigitsDataModule(cache_dir=tiny_cache, **TINY)
    for s in ("train", "test"):
        assert torch.equal(fresh.split(s).tensors[0], cached.split(s).tensors[0])
    other = SpokenDigitsDataModule(cache_dir=tmp_path, seed=1, **TINY)
    assert other.cache_path != fresh.cache_path
    fresh.cache_path.write_bytes(b"not an npz")  # a damaged cache is regenerated, with a warning
    again = SpokenDigitsDataModule(cache_dir=tmp_path, **TINY)
    with pytest.warns(UserWarning, match="unreadable cache"):
        again.setup()
    assert torch.equal(again.split("train").tensors[0], cached.split("train").tensors[0])


@needs_espeak
def test_an_unknown_variant_is_named(tmp_path):
    dm = SpokenDigitsDataModule(cache_dir=tmp_path, voices=("en-us", "en-gb"), variants=("m1", "nosuchvariant"))
    with pytest.raises(ValueError, match="nosuchvariant"):
        dm.setup()


# ----------------------------------------------------------------------------------------------- model
def test_audio_cnn_and_its_kernel_search_space():
    x = torch.rand(3, 1, 40, 51)
    assert AudioCNN(8)(x).shape == (3, 10)
    net = audio_search_space(8)
    assert space.choices(net) == {"kernel": list(AUDIO_KERNELS)}  # one decision, tied over two blocks
    frozen = space.freeze(net, {"kernel": "tall7x3"})
    convs = [m for m in frozen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (7, 3), (7, 3)] and frozen(x).shape == (3, 10)
    plain = AudioCNN(8, kernels=((7, 3), (7, 3)))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in frozen.parameters())
    with pytest.raises(ValueError, match="kernels"):
        AudioCNN(8, kernels=((2, 3), (3, 3)))


# ----------------------------------------------------------------------------------------------- attribution view
def test_spectrogram_overlay_draws_one_panel_per_clip():
    x = torch.rand(4, 1, 40, 51)
    a = torch.randn(4, 1, 40, 51)
    img = A.spectrogram_overlay(x, a, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 4]), list("abcdefghij"))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[1] > img.shape[0]
    red = (img[..., 0] > 180) & (img[..., 1] < 120) & (img[..., 2] < 120)
    blue = (img[..., 2] > 180) & (img[..., 0] < 120) & (img[..., 1] < 120)
    assert red.sum() > 50 and blue.sum() > 50  # signed evidence for and against the target is drawn
    with pytest.raises(ValueError, match="spectrogram_overlay"):
        A.spectrogram_overlay(x[:, 0], a[:, 0])


def test_attribution_monitor_view_is_validated(tmp_path):
    from lightning_nas.callbacks import AttributionMonitor
    from lightning_nas.data import DigitsDataModule

    with pytest.raises(ValueError, match="view"):
        AttributionMonitor(view="waveform")
    monitor = AttributionMonitor(view="spectrogram")
    trainer = fast_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, callbacks=[monitor])
    with pytest.raises(ValueError, match="view`='spectrogram' needs"):  # flat 64-vectors are no spectrograms
        trainer.fit(Classifier(torch.nn.Linear(64, 10)), datamodule=DigitsDataModule(flat=True))


@pytest.fixture(scope="module")
def spectrogram_report(tiny_cache, tmp_path_factory):
    """A one-epoch fit on the tiny set with ``AttributionMonitor(view="spectrogram")``, and its HTML report."""
    import lightning as L

    from lightning_nas.callbacks import AttributionMonitor
    from lightning_nas.report import build_report

    tmp = tmp_path_factory.mktemp("speech_report")
    L.seed_everything(0)
    dm = SpokenDigitsDataModule(cache_dir=tiny_cache, **TINY)
    monitor = AttributionMonitor(method="saliency", view="spectrogram", n_samples=6)
    fast_trainer(tmp, max_epochs=1, callbacks=[monitor]).fit(Classifier(AudioCNN(4)), datamodule=dm)
    return build_report(tmp / "nas_files", tmp / "report.html", title="Spoken digits report")


@needs_espeak
def test_the_report_embeds_the_spectrogram_view_as_a_png(spectrogram_report):
    page = spectrogram_report.read_text()
    assert '<section id="attribution">' in page and "explain/attribution/spectrogram" in page
    m = re.search(r'alt="explain/attribution/spectrogram step \d+"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert m is not None
    import io

    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(base64.b64decode(m.group(1))), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 300  # panels with axes, not a bare 40x51 grid
    files = list((spectrogram_report.parent / "nas_files" / "images").glob("explain_attribution_spectrogram-*.png"))
    assert files and base64.b64decode(m.group(1)) == files[0].read_bytes()  # the file inside the run folder


@needs_espeak
@pytest.mark.slow
def test_the_spectrogram_view_renders_in_headless_chromium(spectrogram_report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not found: install Debian's chromium (.ci/run does) to check the page in a browser")
    page = spectrogram_report.read_text()
    figure = re.search(r'<figure><img class="media" alt="explain/attribution/spectrogram.*?</figure>', page).group(0)
    head = page[: page.index("<body>")]
    only = tmp_path / "view.html"  # the report's own <figure> for the view, alone on a page of the report's style
    only.write_text(f'{head}<body style="margin:0;background:#fff">{figure}</body></html>')
    shot = tmp_path / "shot.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags.append(f"--user-data-dir={tmp_path / 'profile'}")
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1200,500", only.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        flags + ["--dump-dom", spectrogram_report.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "<h1>Spoken digits report</h1>" in dom and "explain/attribution/spectrogram" in dom
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    gray = (np.ptp(img, axis=-1) < 0.03) & (img.mean(-1) > 0.1) & (img.mean(-1) < 0.9)
    assert gray.mean() > 0.05, gray.mean()  # the spectrograms (gray, mid-tones) are drawn by the browser
    assert (img.mean(-1) < 0.5).mean() > 0.01  # axes, ticks and titles


@needs_espeak
@pytest.mark.slow
@needs_espeak
def test_speech_demo_end_to_end(tmp_path, monkeypatch):
    """``lightning-nas demo --task speech`` on 8 speakers (240 clips), one epoch a stage: every stage's row, the
    spectrogram view, drift of the attributions, the int8 ONNX model and the bundle."""
    import dataclasses
    import json

    from lightning_nas import _demo_tasks as T
    from lightning_nas import demo as D

    small_set = dict(voices=("en-us", "en-gb"), variants=("m1", "m3", "f2", "f4"), takes=3)
    small_set.update(val_fraction=0.25, test_fraction=0.25, batch_size=32, cache_dir=tmp_path / "cache")
    small = dataclasses.replace(T.SPEECH, datamodule=lambda seed: SpokenDigitsDataModule(seed=seed, **small_set))
    monkeypatch.setitem(D.TASKS, "speech", small)
    res = D.run_demo(max_epochs=1, out_dir=tmp_path / "demo", task="speech")
    rows = {r["stage"]: r for r in res["rows"]}
    assert list(rows) == [s for s in T.SPEECH.stages if s not in ("multitrial", "bundle")]
    assert res["arch"]["kernel"] in AUDIO_KERNELS
    assert rows["prune"]["params"] < rows["distill"]["params"]
    for stage in ("distill", "prune", "quantize"):
        assert -1.0 <= rows[stage]["attr_rho"] <= 1.0, stage
    out = tmp_path / "demo"
    assert (out / "model_int8.onnx").is_file() and (out / "bundle" / "card.json").is_file()
    images = {p.name.rsplit("-", 1)[0] for p in out.rglob("nas_files/images/*.png")}
    assert "explain_attribution_spectrogram" in images
    card = json.loads(Path(res["card"]).read_text())
    assert card["input_spec"]["shape"][1:] == [1, 40, 51]


# ----------------------------------------------------------------------------------------------- end to end
@needs_espeak
@pytest.mark.slow
def test_speech_pipeline_end_to_end_at_smoke_scale(tmp_path):
    from benchmarks.speech import SpeechConfig, regret, render, run_pipeline

    cfg = SpeechConfig.quick()
    run = run_pipeline(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", verbose=False)
    stages = [r["stage"] for r in run.rows]
    assert stages == [
        "search (supernet path)",
        "train (float)",
        "student alone",
        "distill",
        "prune",
        "quantize (int8, first block float)",
        "quantize (int8)",
        "low-rank",
    ]
    rows = {r["stage"]: r for r in run.rows}
    base = rows["train (float)"]
    assert rows["prune"]["params"] < 0.5 * base["params"] and rows["prune"]["macs"] < 0.5 * base["macs"]
    assert rows["quantize (int8)"]["size_bytes"] < 0.7 * base["size_bytes"]
    assert rows["low-rank"]["params"] < base["params"]
    assert set(run.standalone) == set(AUDIO_KERNELS) and all(
        len(v) == len(cfg.standalone_seeds) for v in run.standalone.values()
    )
    gap, chosen, best = regret(run)
    assert gap >= 0 and chosen in AUDIO_KERNELS and best in AUDIO_KERNELS
    assert [d[0] for d in run.drift] == [
        "another float model (seed)",
        "distill",
        "prune",
        "quantize (fake-quant)",
        "low-rank",
    ]
    assert all(-1.0 <= d[1] <= 1.0 and 0.0 <= d[2] <= 1.0 for d in run.drift)
    text = render(run)
    assert "regret" in text and "Spearman" in text and "| low-rank |" in text
    page = (tmp_path / "run" / "report.html").read_text()
    assert "explain/attribution/spectrogram" in page and "explain/attribution/compressed/prune" in page
    assert "explain/attribution/compression_drift" in page and "Not shown" not in page
