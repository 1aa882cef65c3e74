"""``load_compressed``: a checkpoint written by the compression callbacks, loaded into a fresh instance of the
user's module outside a ``Trainer`` (for export, serving, or a notebook)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def load_compressed(module: nn.Module, checkpoint: str | dict[str, Any]) -> nn.Module:
    """Load a Lightning checkpoint written with ``StructuredPruning`` / ``LowRankFactorization`` /
    ``MagnitudePruning`` into a fresh, unchanged instance of the module, outside a ``Trainer``.

    The recorded changes are replayed in their original order, then the weights are loaded (strictly).
    Returns ``module`` (now pruned/factorized), e.g. ``load_compressed(MyModule(), "last.ckpt").eval()``.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import lightning as L
        >>> from lightning_nas.callbacks import StructuredPruning
        >>> from lightning_nas.deploy import load_compressed
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[StructuredPruning(amount=0.5)])
        >>> trainer.fit(Classifier(DigitsCNN(width=8)), datamodule=DigitsDataModule())
        >>> trainer.save_checkpoint(os.path.join(root, "pruned.ckpt"))
        >>> model = load_compressed(Classifier(DigitsCNN(width=8)), os.path.join(root, "pruned.ckpt")).eval()
        >>> model.net.features[0].out_channels
        4
    """
    from lightning.pytorch.utilities import move_data_to_device

    from lightning_nas._trust import load_weights  # a checkpoint file is data: never unpickle objects from it
    from lightning_nas.callbacks._route import Route  # pure torch: the recorded route from input to logits
    from lightning_nas.compress import lowrank as LR
    from lightning_nas.compress import prune as P

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_weights(checkpoint, "load_compressed: checkpoint")
    if "state_dict" not in ckpt:
        raise ValueError("load_compressed: `checkpoint` is not a Lightning checkpoint (no 'state_dict')")
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    items: list[tuple[int, Callable[[], Any]]] = []
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("StructuredPruning") and state.get("records"):
            ex = move_data_to_device(state["example"], dev)
            fwd = Route.from_state(state["route"]).run
            items += [
                (r["order"], functools.partial(P.replay_pruning, module, r["steps"], ex, fwd)) for r in state["records"]
            ]
        elif key.startswith("LowRankFactorization") and state.get("ranks"):
            items.append((state["order"], functools.partial(LR.factorize, module, ranks=state["ranks"])))
    items.append((-1, functools.partial(P.add_masks_for_state_dict, module, ckpt["state_dict"])))
    for _, fn in sorted(items, key=lambda t: t[0]):
        fn()
    module.load_state_dict(ckpt["state_dict"])
    return module
