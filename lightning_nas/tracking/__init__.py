"""One sink for everything lightning_nas logs, and a reader for W&B offline runs.

``Tracker.from_trainer(trainer)`` is what every callback uses: rich media to W&B when a ``WandbLogger``
is attached, scalars to any other Lightning logger, and files on disk always (rank zero only).
"""

from lightning_nas.tracking._wandb_logger import FallbackWandbLogger
from lightning_nas.tracking.offline import read_offline_run
from lightning_nas.tracking.sink import Tracker, to_uint8_image

__all__ = ["FallbackWandbLogger", "Tracker", "read_offline_run", "to_uint8_image"]
