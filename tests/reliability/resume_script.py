"""Run one reliability fit in its own process: uninterrupted, killed with SIGKILL at the config's ``kill_epoch``
(``--kill``), or resumed from ``OUT/ckpt/last.ckpt`` (``--resume``).

    python -m tests.reliability.resume_script CONFIG OUT [--kill] [--resume]

Writes ``OUT/result.pt`` (the config's result) when the fit completes. Checkpoints go to ``OUT/ckpt/last.ckpt``.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class _KillAtEpoch(L.Callback):
    """SIGKILL this process when ``epoch`` starts: the last checkpoint is the end of ``epoch - 1``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:  # mid-epoch: one step already taken
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    from tests.reliability.configs import CONFIGS

    p = argparse.ArgumentParser()
    p.add_argument("config", choices=sorted(CONFIGS))
    p.add_argument("out", type=Path)
    p.add_argument("--kill", action="store_true", help="SIGKILL at the config's kill_epoch (default 1)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    L.seed_everything(0, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = CONFIGS[args.config]()
    ckpt = ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True, save_top_k=1, every_n_epochs=1)
    callbacks = list(cfg["callbacks"]) + [ckpt]
    if args.kill:
        callbacks.append(_KillAtEpoch(cfg.get("kill_epoch", 1)))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg["max_epochs"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=str(args.out),
        callbacks=callbacks,
        **cfg.get("trainer_kwargs", {}),
    )
    ckpt_path = args.out / "ckpt" / "last.ckpt" if args.resume else None
    trainer.fit(cfg["module"], datamodule=cfg["datamodule"], ckpt_path=ckpt_path)
    torch.save(cfg["result"](trainer, cfg["module"], cfg["callbacks"]), args.out / "result.pt")


if __name__ == "__main__":
    main()
