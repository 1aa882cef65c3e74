"""Spoken digits "zero" ... "nine" synthesized offline by espeak-ng, as log-mel spectrograms: a keyword-spotting
set in the style of Speech Commands that the code makes, so nothing downloads.

Each *speaker* is an espeak-ng voice (an English accent: ``en-us``, ``en-gb-scotland``, ...) with a voice variant
(``m1`` ... ``m7``, ``f1`` ... ``f4``: other formants, pitch and breathiness). Every speaker says every digit
``takes`` times, each take at a random speed (``-s``, words per minute) and pitch (``-p``); each clip is placed
at a random offset in one second and white or pink noise is added at a random signal-to-noise ratio. The split is by
speaker: no voice+variant pair of the test split is heard in training (as Speech Commands splits by speaker).

Generation runs espeak-ng once per take (ten words, cut apart at the pauses), several processes at a time, and is
cached (one ``.npz`` per
configuration) under ``~/.cache/lightning_nas/spoken_digits`` unless ``cache_dir`` says otherwise: a second
``setup`` (in this process or any later one) reads the cache and never runs espeak-ng.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
import warnings
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.data._splits import SplitDataModule

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: espeak-ng's own (formant) English voices; the MBROLA ones need another package and are not used
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
SAMPLE_RATE = 16_000
_FORMAT = 1  # bump when the generated content changes for the same arguments (invalidates caches)
_INSTALL_HINT = (
    "the spoken-digits data is synthesized by espeak-ng, which is not installed (or not on PATH): install the "
    "`espeak-ng` package (Debian/Ubuntu: `apt-get install espeak-ng`; Fedora: `dnf install espeak-ng`; macOS: "
    "`brew install espeak-ng`) or pass `espeak=` the path of the executable"
)


class EspeakNotFoundError(RuntimeError):
    """espeak-ng, which synthesizes the spoken digits, is not installed."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_nas/spoken_digits`` (``~/.cache/...`` without it): outside any repository."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_nas" / "spoken_digits"


def find_espeak(espeak: str | None = None) -> str:
    """The espeak-ng executable (``espeak`` if given, else found on PATH); ``EspeakNotFoundError`` naming the
    package to install when there is none."""
    path = shutil.which(espeak or "espeak-ng")
    if path is None:
        raise EspeakNotFoundError(_INSTALL_HINT + (f" (looked for {espeak!r})" if espeak else ""))
    return path


def _run(cmd: list[str]) -> bytes:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except FileNotFoundError as err:  # removed between find_espeak and here
        raise EspeakNotFoundError(_INSTALL_HINT) from err
    if out.returncode != 0 or not out.stdout:
        msg = out.stderr.decode(errors="replace").strip() or f"exit status {out.returncode}, no audio"
        raise RuntimeError(f"espeak-ng failed: {' '.join(cmd)!r}: {msg}")
    return out.stdout


def espeak_variants(espeak: str | None = None) -> set[str]:
    """Names of the voice variants this espeak-ng installation has (``m1``, ``f2``, ``whisper``, ...)."""
    listing = _run([find_espeak(espeak), "--voices=variant"]).decode(errors="replace")
    return {line.split()[-1].split("/")[-1] for line in listing.splitlines()[1:] if "/" in line}


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """``(samples in [-1, 1] as float32, sample rate)`` of a mono 16-bit WAV given as bytes.

    espeak-ng writing to a pipe cannot seek back to fill in the lengths, so its header claims ~2^30 frames:
    every frame actually present is read."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit samples, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    x = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return (x.reshape(-1, channels).mean(1) if channels > 1 else x), rate


def _resample(x: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if rate == sample_rate:
        return x
    g = math.gcd(rate, sample_rate)
    return resample_poly(x, sample_rate // g, rate // g).astype(np.float32)


def _voice_args(espeak: str | None, voice: str, speed: int, pitch: int) -> list[str]:
    return [find_espeak(espeak), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout"]


def synthesize(
    word: str,
    voice: str = "en-us",
    speed: int = 160,
    pitch: int = 50,
    sample_rate: int = SAMPLE_RATE,
    espeak: str | None = None,
) -> np.ndarray:
    """``word`` spoken by espeak-ng (``voice`` such as ``"en-gb+f2"``, ``speed`` in words per minute, ``pitch``
    0-99) as float32 samples at ``sample_rate``, resampled from espeak-ng's 22,050 Hz by a polyphase filter."""
    x, rate = read_wav(_run(_voice_args(espeak, voice, speed, pitch) + [word]))
    return _resample(x, rate, sample_rate)


_BREAK_S, _GAP_S = 0.6, 0.25  # pause put between words; a quiet run at least this long separates two words


def _split_words(x: np.ndarray, rate: int, n: int) -> list[np.ndarray] | None:
    """The ``n`` words of ``x`` (quiet runs of ``_GAP_S`` or more between them), or None when there are not ``n``."""
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    if not len(loud):
        return None
    cuts = np.flatnonzero(np.diff(loud) > int(_GAP_S * rate))
    starts, ends = np.r_[loud[0], loud[cuts + 1]], np.r_[loud[cuts], loud[-1]]
    return [x[a : b + 1] for a, b in zip(starts, ends)] if len(starts) == n else None


def synthesize_words(
    words: Sequence[str],
    voice: str = "en-us",
    speed: int = 160,
    pitch: int = 50,
    sample_rate: int = SAMPLE_RATE,
    espeak: str | None = None,
) -> list[np.ndarray]:
    """Each of ``words`` spoken by one voice, as ``synthesize`` would give it, from a single espeak-ng run.

    Starting espeak-ng costs about ten times more than speaking one word, so the words are spoken in one SSML
    document with a 600 ms pause between them and cut apart at the pauses (espeak-ng's pauses are digital
    silence; the stop closures inside a word are far shorter). Should the cut not give one piece per word, each
    word is synthesized on its own instead."""
    text = "<speak>" + f'<break time="{int(_BREAK_S * 1000)}ms"/>'.join(words) + "</speak>"
    x, rate = read_wav(_run(_voice_args(espeak, voice, speed, pitch)[:-1] + ["-m", "--stdout", text]))
    pieces = _split_words(x, rate, len(words))
    if pieces is None:
        return [synthesize(w, voice, speed, pitch, sample_rate, espeak) for w in words]
    return [_resample(p, rate, sample_rate) for p in pieces]


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None
) -> torch.Tensor:
    """``(n_freqs, n_mels)`` triangular filters, equally spaced on the mel scale (HTK)
    :math:`m(f) = 2595 \\log_{10}(1 + f / 700)`.

    Filter :math:`j` rises linearly from mel point :math:`m_{j}` to :math:`m_{j+1}` and falls to :math:`m_{j+2}`
    (:math:`n_{mels} + 2` points from ``f_min`` to ``f_max``, default Nyquist), evaluated at the STFT bin
    frequencies. Written here rather than taken from torchaudio: torchaudio wheels pin one torch release each,
    and none is built for the torch this package supports (2.13), so depending on it would pin torch back.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)  # noqa: E731
    points = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    lo, mid, hi = points[:-2, None], points[1:-1, None], points[2:, None]
    up = (freqs[None, :] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None, :]) / np.maximum(hi - mid, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0.0, None).T.astype(np.float32))


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 400,
    hop_length: int = 320,
    n_mels: int = 40,
    top_db: float = 80.0,
) -> torch.Tensor:
    """``(..., n_mels, frames)`` log-mel features in [0, 1] of ``(..., samples)`` waveforms.

    Power spectrum :math:`|\\mathrm{STFT}(x)|^2` (Hann window of ``n_fft``, hop ``hop_length``: 25 ms / 20 ms at
    16 kHz, 51 frames per second), mel filters (``mel_filterbank``), decibels relative to the clip's loudest cell,
    floored ``top_db`` below it and scaled: :math:`v = \\max(0, 1 + (10\\log_{10} P - \\max 10\\log_{10} P) /
    \\mathrm{top\\_db})`. So 0 means "silent" (the baseline the attribution methods delete to) and 1 the peak.
    """
    shape = waveform.shape[:-1]
    x = waveform.reshape(-1, waveform.shape[-1]).float()
    spec = torch.stft(
        x, n_fft, hop_length=hop_length, window=torch.hann_window(n_fft), center=True, return_complex=True
    )
    power = spec.abs().pow(2)  # (B, n_fft // 2 + 1, frames)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
    db = 10.0 * torch.log10(torch.clamp(fb.T @ power, min=1e-10))
    db = db - db.amax(dim=(1, 2), keepdim=True)
    out = torch.clamp(1.0 + db / top_db, min=0.0)
    return out.reshape(*shape, n_mels, out.shape[-1])


def _colored_noise(rng: np.random.Generator, n: int, pink: bool) -> np.ndarray:
    noise = rng.standard_normal(n)
    if pink:  # 1/f power: amplitude spectrum scaled by 1/sqrt(f)
        spec = np.fft.rfft(noise)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        spec[0] = 0.0
        noise = np.fft.irfft(spec, n)
    return noise / (noise.std() + 1e-12)


def _place(rng: np.random.Generator, speech: np.ndarray, n: int, snr_db: float, pink: bool) -> np.ndarray:
    """Trim ``speech`` to where it is audible, put it at a random offset in ``n`` samples, add noise."""
    loud = np.nonzero(np.abs(speech) > 0.02 * (np.abs(speech).max() + 1e-12))[0]
    if len(loud):
        speech = speech[loud[0] : loud[-1] + 1]
    if len(speech) > n:  # longer than the clip: keep its middle
        start = (len(speech) - n) // 2
        speech = speech[start : start + n]
    clip = np.zeros(n, dtype=np.float64)
    offset = int(rng.integers(0, n - len(speech) + 1))
    clip[offset : offset + len(speech)] = speech
    rms = math.sqrt(float(np.mean(speech.astype(np.float64) ** 2)) + 1e-12)
    clip += _colored_noise(rng, n, pink) * rms * 10.0 ** (-snr_db / 20.0)
    return (clip / max(1.0, float(np.abs(clip).max()))).astype(np.float32)


class SpokenDigitsDataModule(SplitDataModule):
    """Spoken digits synthesized by espeak-ng as ``1 x n_mels x frames`` log-mel spectrograms in [0, 1], split by
    speaker (voice + variant), generated once and cached.

    Args:
        batch_size: samples per batch.
        voices: espeak-ng voices (accents); see ``espeak-ng --voices=en``.
        variants: espeak-ng voice variants; see ``espeak-ng --voices=variant``. A speaker is one voice+variant.
        takes: utterances of each digit by each speaker; a take (all ten digits) has its own random speed and
            pitch, each clip its own offset and noise.
        speed_range: words per minute ``(low, high)``, drawn uniformly per take.
        pitch_range: espeak-ng pitch ``(low, high)`` in 0-99, drawn uniformly per take.
        snr_db: signal-to-noise ratio ``(low, high)`` in dB of the added white or pink noise, drawn per take.
        n_mels: mel bands of the features (frames: 51 per second, 20 ms hop).
        val_fraction: fraction of the speakers in the validation split (at least one speaker).
        test_fraction: fraction of the speakers in the test split (at least one speaker).
        seed: seeds the takes (speed, pitch, offset, noise), the speaker split and the train shuffling.
        cache_dir: folder of the cached data; default ``default_cache_dir()`` (``~/.cache/lightning_nas/...``).
        espeak: the espeak-ng executable (default: ``espeak-ng`` on PATH); needed only when nothing is cached.
        n_jobs: espeak-ng processes run at once (default: twice the CPU count, at most 16).
        num_workers: DataLoader workers.
    """

    num_classes = 10
    classes = DIGIT_WORDS

    def __init__(
        self,
        batch_size: int = 64,
        voices: Sequence[str] = VOICES,
        variants: Sequence[str] = VARIANTS,
        takes: int = 3,
        speed_range: tuple[int, int] = (120, 210),
        pitch_range: tuple[int, int] = (25, 75),
        snr_db: tuple[float, float] = (0.0, 30.0),
        n_mels: int = 40,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        espeak: str | None = None,
        n_jobs: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        self.voices = self._names("voices", voices)
        self.variants = self._names("variants", variants)
        check_int("takes", takes, 1)
        self.speed_range = self._pair("speed_range", speed_range, 80, 450)
        self.pitch_range = self._pair("pitch_range", pitch_range, 0, 99)
        self.snr_db = self._pair("snr_db", snr_db, -20.0, 100.0)
        check_int("n_mels", n_mels, 8, 128)
        check_range("val_fraction", val_fraction, 0.0, 0.5, low_inclusive=False)
        check_range("test_fraction", test_fraction, 0.0, 0.5, low_inclusive=False)
        check_int("seed", seed, 0)
        check_type("cache_dir", cache_dir, (str, Path), allow_none=True)
        check_type("espeak", espeak, str, allow_none=True)
        if n_jobs is not None:
            check_int("n_jobs", n_jobs, 1)
        check_int("num_workers", num_workers, 0)
        if len(self.voices) * len(self.variants) < 3:
            raise ValueError(
                f"`voices` x `variants` must make at least 3 speakers (one each for train, val and test), got "
                f"{len(self.voices)} x {len(self.variants)}"
            )
        self.batch_size, self.takes, self.n_mels = batch_size, takes, n_mels
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.espeak, self.n_jobs, self.num_workers = espeak, n_jobs, num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] | None = None
        self.speakers: dict[str, list[str]] = {}
        self.generation_seconds: float | None = None  # set when this instance generated the data

    @staticmethod
    def _names(name: str, values: Sequence[str]) -> tuple[str, ...]:
        if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
            raise TypeError(f"`{name}` must be a non-empty list of names, got {values!r}")
        for v in values:
            if not isinstance(v, str) or not v or v.startswith("-") or "+" in v or any(c.isspace() for c in v):
                raise ValueError(f"`{name}` holds {v!r}: each must be an espeak-ng name (no '+', '-' or spaces)")
        if len(set(values)) != len(values):
            raise ValueError(f"`{name}` has duplicates: {list(values)}")
        return tuple(values)

    @staticmethod
    def _pair(name: str, value: Any, low: float, high: float) -> tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise TypeError(f"`{name}` must be a (low, high) pair, got {value!r}")
        for v in value:
            check_range(name, v, low, high)
        if value[0] > value[1]:
            raise ValueError(f"`{name}` must be (low, high) with low <= high, got {tuple(value)!r}")
        return tuple(value)

    # ------------------------------------------------------------------ shapes and metadata
    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.n_mels, 1 + SAMPLE_RATE // 320)

    def input_spec(self) -> dict[str, Any]:
        """The model input, as a model card records it."""
        return {
            "name": "input",
            "dtype": "float32",
            "shape": ["batch", *self.input_shape],
            "range": [0.0, 1.0],
            "normalisation": f"log-mel ({self.n_mels} mels, 25 ms window, 20 ms hop, 16 kHz), dB relative to the "
            "clip's peak, 80 dB floor scaled to [0, 1]",
        }

    def config(self) -> dict[str, Any]:
        """Everything that determines the generated data (the cache key is its hash)."""
        return {
            "format": _FORMAT,
            "voices": list(self.voices),
            "variants": list(self.variants),
            "takes": self.takes,
            "speed_range": list(self.speed_range),
            "pitch_range": list(self.pitch_range),
            "snr_db": [float(v) for v in self.snr_db],
            "n_mels": self.n_mels,
            "seed": self.seed,
            "sample_rate": SAMPLE_RATE,
        }

    @property
    def cache_path(self) -> Path:
        key = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"spoken_digits-{key}.npz"

    # ------------------------------------------------------------------ generation
    def _plan(self) -> list[dict[str, Any]]:
        """One record per espeak-ng run (a speaker's take of all ten digits, at one speed and pitch), each with one
        record per clip (noise), drawn in a fixed order from ``seed``: independent of how many run at once."""
        rng = np.random.default_rng([self.seed, 1])
        plan = []
        for s, (voice, variant) in enumerate((v, a) for v in self.voices for a in self.variants):
            for _ in range(self.takes):
                plan.append(
                    {
                        "speaker": s,
                        "voice": f"{voice}+{variant}",
                        "speed": int(rng.integers(self.speed_range[0], self.speed_range[1] + 1)),
                        "pitch": int(rng.integers(self.pitch_range[0], self.pitch_range[1] + 1)),
                        "clips": [
                            {
                                "snr_db": float(rng.uniform(*self.snr_db)),
                                "pink": bool(rng.integers(0, 2)),
                                "noise_seed": int(rng.integers(0, 2**31)),
                            }
                            for _ in DIGIT_WORDS
                        ],
                    }
                )
        return plan

    def _generate(self) -> dict[str, np.ndarray]:
        import time

        exe = find_espeak(self.espeak)
        missing = sorted(set(self.variants) - espeak_variants(exe))
        if missing:
            raise ValueError(f"`variants` {missing} are not espeak-ng variants (see `espeak-ng --voices=variant`)")
        plan = self._plan()
        t0 = time.perf_counter()
        jobs = self.n_jobs or min(16, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # the work is in the espeak-ng processes
            speech = list(
                pool.map(lambda p: synthesize_words(DIGIT_WORDS, p["voice"], p["speed"], p["pitch"], espeak=exe), plan)
            )
        clips, meta = [], []
        for p, words in zip(plan, speech):
            for digit, (c, w) in enumerate(zip(p["clips"], words)):
                rng = np.random.default_rng(c["noise_seed"])
                clips.append(_place(rng, w, SAMPLE_RATE, c["snr_db"], c["pink"]))
                meta.append((digit, p["speaker"], p["speed"], p["pitch"], c["snr_db"]))
        audio = np.stack(clips)
        feats = torch.cat(
            [log_mel_spectrogram(torch.from_numpy(c), n_mels=self.n_mels) for c in np.array_split(audio, 16)]
        )
        self.generation_seconds = time.perf_counter() - t0
        m = np.array(meta, dtype=np.float64)
        return {
            "x": feats.unsqueeze(1).numpy().astype(np.float32),
            "y": m[:, 0].astype(np.int64),
            "speaker": m[:, 1].astype(np.int64),
            "speed": m[:, 2].astype(np.int64),
            "pitch": m[:, 3].astype(np.int64),
            "snr_db": m[:, 4].astype(np.float32),
            "config": np.array(json.dumps(self.config(), sort_keys=True)),
        }

    def _load_cache(self) -> dict[str, np.ndarray] | None:
        path = self.cache_path
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            ok = str(arrays["config"]) == json.dumps(self.config(), sort_keys=True)
            ok = ok and arrays["x"].shape[1:] == self.input_shape and len(arrays["x"]) == len(arrays["y"])
        except (OSError, ValueError, KeyError, EOFError) as err:
            warnings.warn(
                f"SpokenDigitsDataModule: unreadable cache {str(path)!r} ({err}); generating it again", stacklevel=2
            )
            return None
        if not ok:
            warnings.warn(
                f"SpokenDigitsDataModule: cache {str(path)!r} does not match its configuration; regenerating",
                stacklevel=2,
            )
            return None
        return arrays

    def _save_cache(self, arrays: dict[str, np.ndarray]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
            os.replace(tmp, self.cache_path)  # atomic: a concurrent reader sees the old file or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def prepare_data(self) -> None:
        """Generate and cache the data unless it is cached already (Lightning calls this on one process)."""
        if not self.cache_path.is_file():
            self._save_cache(self._generate())

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        arrays = self._load_cache()
        if arrays is None:
            arrays = self._generate()
            self._save_cache(arrays)
        n_speakers = len(self.voices) * len(self.variants)
        order = np.random.default_rng([self.seed, 2]).permutation(n_speakers)
        n_test = max(1, round(self.test_fraction * n_speakers))
        n_val = max(1, round(self.val_fraction * n_speakers))
        groups = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        names = [f"{v}+{a}" for v in self.voices for a in self.variants]
        x, y, spk = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]), arrays["speaker"]
        self._splits = {}
        for split, ids in groups.items():
            idx = torch.from_numpy(np.nonzero(np.isin(spk, ids))[0])
            self._splits[split] = TensorDataset(x[idx].clone(), y[idx].clone())
            self.speakers[split] = sorted(names[i] for i in ids)
