"""Real data that ships inside installed packages (or Debian packages): nothing downloads at run time."""

from lightning_nas.data.digits import DigitsDataModule, load_digits_arrays
from lightning_nas.data.text import TextDataModule, WordVocabulary, load_wordnet_nouns

__all__ = ["DigitsDataModule", "TextDataModule", "WordVocabulary", "load_digits_arrays", "load_wordnet_nouns"]
