"""An existing LightningCLI project: lightning_nas callbacks are added in config.yaml, not in code.

python examples/cli/main.py fit --config examples/cli/config.yaml
"""

from lightning.pytorch.cli import LightningCLI

from lightning_nas.data import DigitsDataModule
from lightning_nas.models import Classifier


def main() -> None:
    LightningCLI(Classifier, DigitsDataModule, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
