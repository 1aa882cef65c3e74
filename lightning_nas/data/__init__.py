"""Real data that ships inside installed packages (or Debian packages), or that the code makes: nothing downloads
at run time."""

from lightning_nas.data.digits import DigitsDataModule, load_digits_arrays
from lightning_nas.data.speech import (
    DIGIT_WORDS,
    EspeakNotFoundError,
    SpokenDigitsDataModule,
    log_mel_spectrogram,
    mel_filterbank,
)
from lightning_nas.data.text import TextDataModule, WordVocabulary, load_wordnet_nouns

__all__ = [
    "DigitsDataModule",
    "load_digits_arrays",
    "SpokenDigitsDataModule",
    "EspeakNotFoundError",
    "DIGIT_WORDS",
    "log_mel_spectrogram",
    "mel_filterbank",
    "TextDataModule",
    "WordVocabulary",
    "load_wordnet_nouns",
]
