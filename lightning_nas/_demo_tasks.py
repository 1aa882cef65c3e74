"""The demo's tasks: what ``lightning-nas demo --task <name>`` trains, searches, compresses and explains.

The stages (``lightning_nas.demo``) are shared; a task only says what is specific to its data and model, in one
``Task``. Adding a task is one ``Task(...)`` appended to ``TASKS`` (``--task`` offers every name there)::

    SPEECH = Task(
        name="speech",
        help="spoken digits synthesized by espeak-ng, a small audio CNN over log-mel spectrograms",
        datamodule=_speech_datamodule,         # split(name) -> TensorDataset(x, y), example_input(n) -> inputs
        model=lambda dm: _audio_cnn(8),        # the reference float model
        search_space=_audio_space,             # the model with space.LayerChoice(s) in it
        student=lambda dm: _audio_cnn(8),      # distillation's student
        input_spec=lambda dm: dm.input_spec(),
        quant_ignore=(),                       # layers QAT keeps float
        attribution="image",                   # spectrograms attribute like images
        explain_kwargs=lambda dm: {"method": "saliency", "view": "spectrogram"},
    )
    TASKS = {t.name: t for t in (DIGITS, TEXT, SPEECH)}

(``SPEECH`` below is exactly that.)

Each field's meaning is documented on ``Task``; defaults fit a float-input classifier trained by
``models.Classifier`` with Adam. The contract with the stages: batches are ``(inputs, labels)`` (what
``models.Classifier`` trains on), the datamodule is set up once before the first stage, ``split("val")`` /
``split("test")`` give the probe and the int8 model's test set, ``split("train").tensors[0]`` the bundle's
reference data (float inputs only), and ``quant_ignore`` / ``embedding`` name modules of the net the factories
return (after ``space.freeze``: a frozen LayerChoice keeps its name). ``tests/test_text.py`` checks every task
in ``TASKS`` against ``STAGE_NAMES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `lightning-nas --help` reads TASKS without importing torch
    import lightning as L
    from torch import nn

# every stage a task may list (lightning_nas.demo.STAGES), and those a task runs unless it lists its own
STAGE_NAMES = ("search", "multitrial", "train", "explain", "distill", "prune", "lowrank", "quantize", "bundle")
DEFAULT_STAGES = ("search", "multitrial", "train", "explain", "distill", "prune", "quantize", "bundle")


@dataclass(frozen=True)
class Task:
    """What the shared demo stages need to know about one task.

    Args:
        name: the ``--task`` value.
        help: one line for ``lightning-nas demo --help`` and the model card.
        datamodule: ``seed -> LightningDataModule``; it must offer ``split(name)`` (``"train"``/``"val"``/``"test"``,
            a ``TensorDataset`` of ``(inputs, labels)``) and ``example_input(n)`` (a batch of ``n`` inputs).
        model: ``datamodule -> nn.Module``, the reference float model (trained when no search stage runs).
        search_space: ``datamodule -> nn.Module``, the model with ``space.LayerChoice`` decisions in it (DARTS).
        student: ``datamodule -> nn.Module``, the smaller model the distill stage trains against the teacher.
        input_spec: ``datamodule -> dict``, the model card's input spec (name, dtype, shape, range, meaning).
        quant_ignore: module names (inside the net) QAT keeps float, e.g. an embedding or a first conv.
        attribution: ``"image"`` (maps over float inputs: images, spectrograms) or ``"tokens"`` (integer ids,
            attributed over the output of the net's ``embedding`` module and shown as highlighted text).
        embedding: for ``"tokens"``, the ``nn.Embedding``'s name inside the net.
        explain_kwargs: ``datamodule -> dict`` of extra ``AttributionMonitor`` arguments (e.g. ``vocabulary``).
        paths: attach ``DecisionPaths`` in the explain stage (needs image-like inputs).
        max_epochs: default epochs per training stage (``--max-epochs`` overrides).
        search_epochs: epochs of the one-shot search (at most ``max_epochs``).
        distill_factor: the distillation stage trains ``distill_factor * max_epochs`` epochs.
        lr: Adam's learning rate of the search and training stages.
        lr_range: the multi-trial stage's log-uniform range of learning rates.
        student_lr: the distillation student's learning rate.
        stages: the stages to run, in order (names from ``lightning_nas.demo.STAGES``).
        quant_lr_scale: QAT fine-tunes at ``lr * quant_lr_scale``.
        threads: torch's intra-op threads for the demo (``None``: torch's default; ``--threads`` overrides).
    """

    name: str
    help: str
    datamodule: Callable[[int], L.LightningDataModule]
    model: Callable[[Any], nn.Module]
    search_space: Callable[[Any], nn.Module]
    student: Callable[[Any], nn.Module]
    input_spec: Callable[[Any], dict[str, Any]]
    quant_ignore: tuple[str, ...] = ()
    attribution: str = "image"
    embedding: str | None = None
    explain_kwargs: Callable[[Any], dict[str, Any]] = field(default=lambda dm: {})
    paths: bool = True
    max_epochs: int = 8
    search_epochs: int = 3
    distill_factor: float = 1.0
    lr: float = 3e-3
    lr_range: tuple[float, float] = (1e-3, 1e-2)
    student_lr: float = 1e-2
    stages: tuple[str, ...] = DEFAULT_STAGES
    quant_lr_scale: float = 0.1
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.attribution not in ("image", "tokens"):
            raise ValueError(f"Task {self.name!r}: `attribution` must be 'image' or 'tokens', got {self.attribution!r}")
        if self.attribution == "tokens" and not self.embedding:
            raise ValueError(f"Task {self.name!r}: attribution='tokens' needs `embedding`, the nn.Embedding's name")
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown or not self.stages:
            raise ValueError(f"Task {self.name!r}: `stages` must be names from {list(STAGE_NAMES)}, got {unknown}")


# ------------------------------------------------------------------------------------------------ digits
def _digits_space(dm: Any) -> nn.Module:
    """DigitsCNN with two LayerChoices (3x3 conv, 1x1 conv or skip) put after each of its convs."""
    from torch import nn

    from lightning_nas import space
    from lightning_nas.models import DigitsCNN

    def block(label: str, c: int) -> space.LayerChoice:
        conv = lambda k: nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU())  # noqa: E731
        return space.LayerChoice({"conv3": conv(3), "conv1": conv(1), "skip": nn.Identity()}, label=label)

    net = DigitsCNN(width=16)
    f: Any = net.features  # an nn.Sequential (sliced)
    net.features = nn.Sequential(*f[:3], block("block1", 16), *f[3:6], block("block2", 32), f[6])
    return net


def _digits_cnn() -> nn.Module:
    from lightning_nas.models import DigitsCNN

    return DigitsCNN(width=16)


# The quantize stage keeps the first conv block float: on the pruned net (8 channels from one input channel) ONNX
# Runtime's int8 QLinearConv is several times slower than its fp32 Conv and made the int8 model slower than the
# fp32 one; the other layers run int8. It fine-tunes at a tenth of the module's learning rate with BatchNorm
# statistics frozen (torch's fused Conv+BN QAT modules otherwise knocked the pruned net down by ~20 points in
# the first epoch). Measured: BENCHMARKS.md, "make demo's quantize stage" (benchmarks/qat_demo.py).
def _digits_datamodule(seed: int) -> Any:
    from lightning_nas.data import DigitsDataModule

    return DigitsDataModule(batch_size=64, seed=seed)


DIGITS = Task(
    name="digits",
    help="scikit-learn's 8x8 handwritten digits, a small CNN (the default)",
    datamodule=_digits_datamodule,
    model=lambda dm: _digits_cnn(),
    search_space=_digits_space,
    student=lambda dm: _digits_cnn(),
    input_spec=lambda dm: {
        "name": "input",
        "dtype": "float32",
        "shape": ["batch", 1, 8, 8],
        "range": [0.0, 1.0],
        "normalisation": "pixel / 16",
    },
    quant_ignore=("features.0", "features.1", "features.2"),
)


# ------------------------------------------------------------------------------------------------ text
TEXT_KERNELS = (1, 3, 5, 7)  # the one-shot search's decision: the first conv's width in words
TEXT_EMBED, TEXT_CHANNELS = 32, 64  # the teacher; the distillation student halves both
TEXT_MAX_SAMPLES = 30_000  # synsets the demo reads (of 82,115); benchmarks/text.py uses them all


def _text_datamodule(seed: int, max_samples: int | None = TEXT_MAX_SAMPLES) -> Any:
    from lightning_nas.data import TextDataModule

    return TextDataModule(batch_size=256, max_len=32, min_freq=3, max_samples=max_samples, seed=seed)


def text_space(dm: Any, embed_dim: int = TEXT_EMBED, channels: int = TEXT_CHANNELS) -> nn.Module:
    """TextCNN whose first conv block is a LayerChoice over ``TEXT_KERNELS`` widths (label ``"conv1"``)."""
    from torch import nn

    from lightning_nas import space
    from lightning_nas.models import TextCNN, text_conv_block

    net = TextCNN(dm.vocab_size, dm.num_classes, embed_dim, channels)
    choice = space.LayerChoice({f"k{k}": text_conv_block(embed_dim, channels, k) for k in TEXT_KERNELS}, label="conv1")
    old: Any = net.features  # an nn.Sequential: the first conv block (3 modules) becomes the choice
    net.features = nn.Sequential(choice, *old[3:])
    return net


def _text_cnn(dm: Any, embed_dim: int, channels: int, kernel_size: int = 3) -> nn.Module:
    from lightning_nas.models import TextCNN

    return TextCNN(dm.vocab_size, dm.num_classes, embed_dim, channels, kernel_size)


TEXT = Task(
    name="text",
    help="WordNet 3.0 noun glosses -> 26 lexicographer classes (Debian's wordnet-base), a text CNN",
    datamodule=_text_datamodule,
    model=lambda dm: _text_cnn(dm, TEXT_EMBED, TEXT_CHANNELS),
    search_space=text_space,
    student=lambda dm: _text_cnn(dm, TEXT_EMBED // 2, TEXT_CHANNELS // 2),
    input_spec=lambda dm: {
        "name": "input",
        "dtype": "int64",
        "shape": ["batch", dm.max_len],
        "range": [0, dm.vocab_size - 1],
        "normalisation": "word ids: lowercase [a-z0-9]+ words, 0 pads, 1 unknown (TextDataModule.vocab)",
    },
    quant_ignore=("embedding",),  # an int8 embedding table would need its own quantization scheme: kept float
    attribution="tokens",
    embedding="embedding",
    explain_kwargs=lambda dm: {"vocabulary": dm.vocab.itos, "class_names": dm.class_names},
    paths=False,
    max_epochs=3,
    search_epochs=2,  # DARTS runs all four widths at once: 2 epochs cost ~10 of plain training
    distill_factor=2.0,  # the student starts from scratch; the teacher trained 2 + 3 + 2 epochs
    lr=3e-3,
    # no bundle: bundles, `serve` and the drift profile take float32 inputs; token ids are not supported there yet
    stages=("search", "multitrial", "train", "explain", "distill", "prune", "lowrank", "quantize"),
    quant_lr_scale=0.1,
    # batches of small 1-D convs: a second intra-op thread saves little and, on a busy machine, its spinning cost
    # 6x the CPU time (measured: 74 s of CPU on one thread vs 462 s on two at load 5)
    threads=1,
)


# ------------------------------------------------------------------------------------------------ speech
def _speech_datamodule(seed: int) -> Any:
    from lightning_nas.data import SpokenDigitsDataModule

    return SpokenDigitsDataModule(batch_size=64, seed=seed)  # generated by espeak-ng once, then cached


def _audio_cnn(width: int) -> nn.Module:
    from lightning_nas.models import AudioCNN

    return AudioCNN(width=width)


def _audio_space(dm: Any) -> nn.Module:
    from lightning_nas.models import audio_search_space

    return audio_search_space(width=8)  # one tied decision: the kernel shape (freq x time) of blocks 2 and 3


SPEECH = Task(
    name="speech",
    help="spoken digits synthesized by espeak-ng (Debian's espeak-ng), a small audio CNN over log-mel spectrograms",
    datamodule=_speech_datamodule,
    model=lambda dm: _audio_cnn(8),
    search_space=_audio_space,
    student=lambda dm: _audio_cnn(8),  # as digits: the same net from scratch; the prune stage makes it smaller
    input_spec=lambda dm: dm.input_spec(),
    quant_ignore=(),  # models.AUDIO_QUANT_IGNORE: every layer int8 was the fastest in torch (BENCHMARKS.md)
    attribution="image",  # saliency over the spectrogram, drawn with frequency up and time in seconds
    explain_kwargs=lambda dm: {"method": "saliency", "view": "spectrogram"},
    max_epochs=6,
    search_epochs=3,
    threads=1,
)

TASKS: dict[str, Task] = {t.name: t for t in (DIGITS, TEXT, SPEECH)}
