"""WordNet 3.0 noun glosses and their lexicographer class (26 classes, ~82k sentences) as a LightningDataModule.

The data is Princeton WordNet 3.0 as Debian ships it (``apt-get install wordnet-base``: plain files under
``/usr/share/wordnet``); nothing downloads at run time. Each line of ``data.noun`` is one synset::

    02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 ... | a member of the genus ...

with the synset offset, the lexicographer file number (``05``: ``noun.animal``), the lemma words and, after
``|``, the gloss. The task: read the gloss (optionally preceded by the lemma words), predict the lexicographer
class (``noun.act``, ``noun.animal``, ..., ``noun.time``; ``lexnames(5WN)`` fixes the numbering).

Tokenizer (``WordVocabulary``): lowercase, split into words with the regular expression ``[a-z0-9]+`` (so
``"don't"`` is ``don``, ``t``), ids from the training split only: words seen at least ``min_freq`` times, most
frequent first; id 0 pads, id 1 is every unknown word. Sequences are cut (or padded) to ``max_len`` tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.data._splits import SplitDataModule

WORDNET_DIR = Path("/usr/share/wordnet")

# lexnames(5WN) of WordNet 3.0: lexicographer file number -> name, for the 26 noun files (03..28). Debian's
# wordnet-base ships the numbers in data.noun and the names only in the man page, so they are written here.
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}
CLASS_NAMES: list[str] = [NOUN_LEXNAMES[k] for k in sorted(NOUN_LEXNAMES)]

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words (``[a-z0-9]+``); punctuation and quotes are dropped."""
    return _WORD.findall(text.lower())


def load_wordnet_nouns(
    root: str | Path = WORDNET_DIR, with_lemmas: bool = False
) -> tuple[list[str], np.ndarray, list[str]]:
    """``(texts, labels, lemmas)`` of every noun synset in ``root/data.noun``: the gloss (after ``with_lemmas``,
    preceded by the synset's words, underscores as spaces), the class index into ``CLASS_NAMES`` and the first
    lemma. Raises ``FileNotFoundError`` naming the Debian package when WordNet is not installed."""
    path = Path(root) / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet 3.0 not found ({path} is missing): install Debian's package with "
            "`apt-get install wordnet-base` (it puts the database under /usr/share/wordnet), or pass `root=` "
            "a folder holding WordNet 3.0's data.noun"
        )
    index = {k: i for i, k in enumerate(sorted(NOUN_LEXNAMES))}
    texts: list[str] = []
    labels: list[int] = []
    lemmas: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:  # the licence header, indented by two spaces
                continue
            head, _, gloss = line.partition("|")
            fields = head.split()
            lex, n_words = int(fields[1]), int(fields[3], 16)
            words = [w.replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
            gloss = gloss.strip()
            texts.append(f"{' ; '.join(words)} : {gloss}" if with_lemmas else gloss)
            labels.append(index[lex])
            lemmas.append(words[0] if words else "")
    return texts, np.asarray(labels, dtype=np.int64), lemmas


class WordVocabulary:
    """Word ids from a corpus: ``PAD`` (0), ``UNK`` (1), then words seen at least ``min_freq`` times, most
    frequent first (ties alphabetical), at most ``max_size`` entries in all."""

    PAD, UNK = 0, 1

    def __init__(self, texts: Iterable[str], min_freq: int = 2, max_size: int | None = None) -> None:
        check_int("min_freq", min_freq, 1)
        counts = Counter(w for t in texts for w in tokenize(t))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            check_int("max_size", max_size, 3)
            words = words[: max_size - 2]
        self.itos: list[str] = ["<pad>", "<unk>", *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Ids of ``text``'s first ``max_len`` words, padded with ``PAD`` to ``max_len``."""
        ids = [self.stoi.get(w, self.UNK) for w in tokenize(text)[:max_len]]
        return ids + [self.PAD] * (max_len - len(ids))

    def encode_batch(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        """``(len(texts), max_len)`` int64 ids."""
        return torch.tensor([self.encode(t, max_len) for t in texts], dtype=torch.int64).reshape(-1, max_len)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of ``ids`` (padding dropped)."""
        return [self.itos[i] for i in ids if i != self.PAD]


class TextDataModule(SplitDataModule):
    """WordNet 3.0 noun glosses -> lexicographer class (26 classes), with a deterministic stratified split.

    Batches are ``(ids, label)``: ``ids`` int64 ``(B, max_len)`` word ids (``vocab``), ``label`` int64 ``(B,)``
    indexing ``CLASS_NAMES``. The vocabulary is built from the training split only.

    Args:
        batch_size: samples per batch.
        max_len: tokens per sentence (longer glosses are cut, shorter ones padded with id 0).
        min_freq: a word needs this many occurrences in the training split to get its own id (else ``<unk>``).
        with_lemmas: put the synset's words before the gloss (an easier task: the lemma often names the class).
        max_samples: use a stratified subset of this many synsets (before splitting), e.g. for tests.
        val_fraction: fraction of the samples in the validation split.
        test_fraction: fraction of the samples in the test split.
        seed: seed of the split (the same seed always gives the same split) and of train shuffling.
        root: the folder holding WordNet's ``data.noun`` (Debian's ``wordnet-base``: ``/usr/share/wordnet``).
        num_workers: DataLoader workers.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        batch_size: int = 128,
        max_len: int = 32,
        min_freq: int = 3,
        with_lemmas: bool = False,
        max_samples: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        root: str | Path = WORDNET_DIR,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("max_len", max_len, 1)
        check_int("min_freq", min_freq, 1)
        check_type("with_lemmas", with_lemmas, bool)
        if max_samples is not None:
            check_int("max_samples", max_samples, 100)
        check_range("val_fraction", val_fraction, 0.0, 0.5, low_inclusive=False)
        check_range("test_fraction", test_fraction, 0.0, 0.5, low_inclusive=False)
        check_int("seed", seed, 0)
        check_int("num_workers", num_workers, 0)
        self.batch_size, self.max_len, self.min_freq, self.with_lemmas = batch_size, max_len, min_freq, with_lemmas
        self.max_samples, self.val_fraction, self.test_fraction = max_samples, val_fraction, test_fraction
        self.seed, self.root, self.num_workers = seed, Path(root), num_workers
        self.save_hyperparameters()
        self.vocab: WordVocabulary | None = None
        self._splits: dict[str, TensorDataset] | None = None
        self._texts: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        texts, y, _ = load_wordnet_nouns(self.root, self.with_lemmas)
        idx = np.arange(len(y))
        if self.max_samples is not None and self.max_samples < len(idx):
            idx, _ = train_test_split(
                idx, train_size=self.max_samples, stratify=_strata(y, idx), random_state=self.seed
            )
        rest, test = train_test_split(
            idx, test_size=self.test_fraction, stratify=_strata(y, idx), random_state=self.seed
        )
        val_size = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_size, stratify=_strata(y, rest), random_state=self.seed)
        self._texts = {name: [texts[i] for i in ids] for name, ids in (("train", train), ("val", val), ("test", test))}
        self.vocab = WordVocabulary(self._texts["train"], self.min_freq)
        self._splits = {
            name: TensorDataset(self.vocab.encode_batch(self._texts[name], self.max_len), torch.from_numpy(y[ids]))
            for name, ids in (("train", train), ("val", val), ("test", test))
        }

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary (calls ``setup`` if needed): the ``nn.Embedding``'s ``num_embeddings``."""
        self.setup()
        assert self.vocab is not None  # setup() built it
        return len(self.vocab)

    def texts(self, name: str) -> list[str]:
        """The raw sentences of split ``name``, row-aligned with ``split(name)``."""
        self.setup()
        return self._texts[name]


def _strata(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Labels of ``idx`` for stratification, with classes too rare to split (fewer than 10 samples) pooled into
    one stratum so that ``train_test_split`` accepts them."""
    lab = y[idx].copy()
    counts = np.bincount(lab, minlength=int(y.max()) + 1)
    lab[counts[lab] < 10] = -1
    return lab
