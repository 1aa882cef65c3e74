"""lightning_nas: search, compress, explain and ship PyTorch Lightning models with callbacks."""
__version__ = "0.1.0"
