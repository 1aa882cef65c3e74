"""A ``WandbLogger`` that never stops training because W&B cannot start."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.loggers import WandbLogger


class FallbackWandbLogger(WandbLogger):
    """``WandbLogger`` that falls back to offline mode (then to a disabled run) when W&B fails to start.

    Online mode without network, a rejected key or an unreachable server makes ``wandb.init`` raise, and a
    plain ``WandbLogger`` then ends the fit. This one warns, records the run offline instead (sync it later
    with ``wandb sync``), and only as a last resort disables W&B; the lightning_nas file sink keeps
    everything in every case. Arguments are those of ``WandbLogger``.

    Examples:
        >>> import tempfile
        >>> from lightning_nas.tracking import FallbackWandbLogger
        >>> logger = FallbackWandbLogger(project="digits", save_dir=tempfile.mkdtemp(), offline=True)
        >>> type(logger).__mro__[1].__name__  # a WandbLogger: pass it as Trainer(logger=...)
        'WandbLogger'
    """

    @property
    def experiment(self) -> Any:
        try:
            return super().experiment
        except Exception as exc:
            for mode in ("offline", "disabled"):
                if self._wandb_init.get("mode") == mode:
                    continue
                warnings.warn(
                    f"W&B could not start ({type(exc).__name__}: {str(exc)[:200]}); continuing with mode={mode!r}",
                    stacklevel=2,
                )
                self._wandb_init["mode"] = mode
                self._offline = mode == "offline"
                self._experiment = None
                try:
                    return super().experiment
                except Exception as again:
                    exc = again
            raise
