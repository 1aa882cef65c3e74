"""Real data that ships inside installed packages: nothing downloads at run time."""

from lightning_nas.data.digits import DigitsDataModule, load_digits_arrays

__all__ = ["DigitsDataModule", "load_digits_arrays"]
