"""``LowRankFactorization``: replace layers by truncated-SVD pairs at an epoch, then fine-tune.

Hand-written (no library ships SVD factorization as a training callback). The algorithm is
``lightning_nas.compress.lowrank.factorize``; this callback decides when, rebuilds the optimizer, records the
chosen ranks so a checkpoint resumes into a fresh unfactorized module, and streams the explanation.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lightning_nas._modules import name_matches
from lightning_nas._validate import check_int, check_range, check_type
from lightning_nas.callbacks._structural import install_restore_hook, param_names, rebuild_optimizers, spawned
from lightning_nas.callbacks.base import LightningNASCallback
from lightning_nas.compress import lowrank as LR


class LowRankFactorization(LightningNASCallback):
    """Factorize ``Linear``/``Conv1d``/``Conv2d`` layers by truncated SVD at ``start_epoch`` (then training
    fine-tunes them).

    Args:
        energy: fraction of spectral energy ``sum s_i^2`` each layer keeps, in ``(0, 1]``.
        budget: instead of ``energy``, the fraction in ``(0, 1)`` of a layer's parameters its factors may use.
        start_epoch: epoch at whose start the layers are replaced.
        layers: layer names to consider (default: every Linear and groups=1 Conv1d/Conv2d).
        ignore: layer names (prefix or glob) to leave alone.
        min_saving: only factorize where MACs drop by at least this fraction; other layers are skipped with
            a warning (never an error).

    Logged: ``lowrank/<layer>/rank``, ``lowrank/<layer>/energy_kept``, ``lowrank/params``, line series
    ``lowrank/<layer>/spectrum`` (singular values and cumulative energy) and table ``lowrank/layers``.

    Examples:
        Each layer keeps the rank holding half its spectral energy, where that cuts its MACs by at least 10%:

        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas.callbacks import LowRankFactorization
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> model = Classifier(DigitsCNN(width=16))
        >>> lowrank = LowRankFactorization(energy=0.5)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp(), callbacks=[lowrank])
        >>> trainer.fit(model, datamodule=DigitsDataModule())
        >>> sorted(lowrank.ranks)  # the layers factorized (ranks in lowrank.ranks, each layer now two)
        ['net.classifier', 'net.features.0', 'net.features.3']
        >>> all(r < 16 for r in lowrank.ranks.values())
        True
    """

    _state_attrs = ("ranks", "order", "done")

    def __init__(
        self,
        energy: float | None = 0.9,
        budget: float | None = None,
        start_epoch: int = 0,
        layers: Sequence[str] | None = None,
        ignore: Sequence[str] = (),
        min_saving: float = 0.1,
    ) -> None:
        super().__init__()
        energy, budget = LR.check_energy_budget(energy, budget)
        check_int("start_epoch", start_epoch, 0)
        check_range("min_saving", min_saving, 0.0, 1.0, high_inclusive=False)
        if isinstance(ignore, str):
            ignore = [ignore]
        check_type("ignore", ignore, (list, tuple))
        self.energy, self.budget, self.start_epoch, self.min_saving = energy, budget, start_epoch, min_saving
        self.layers = None if layers is None else list(layers)
        self.ignore = list(ignore)
        self.ranks: dict[str, int] = {}
        self.order = -1
        self.done = False
        self.report: list[LR.LayerFactorization] = []

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pl_module = pl_module
        install_restore_hook(pl_module, self._replay_items)
        self._densify = False
        if stage == "fit" and spawned(trainer) and not getattr(self, "_hooked", False):
            # ddp_spawn: the main process loads the final state_dict into its own unfactorized module
            pl_module.register_state_dict_post_hook(functools.partial(type(self)._dense_state_dict, self))
            self._hooked = True
        super().setup(trainer, pl_module, stage)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._densify = stage == "fit" and getattr(self, "_hooked", False)

    def _dense_state_dict(self, module: Any, state_dict: dict[str, Any], prefix: str, meta: Any) -> None:
        """Replace each factor pair by its product ``W_r = B A`` (the same function, original key names)."""
        if not self._densify or prefix:
            return
        for layer in self.ranks:
            a, b = state_dict.pop(f"{layer}.0.weight"), state_dict.pop(f"{layer}.1.weight")
            state_dict[f"{layer}.weight"] = LR.merge_factors(a, b)
            if f"{layer}.1.bias" in state_dict:
                state_dict[f"{layer}.bias"] = state_dict.pop(f"{layer}.1.bias")

    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cands = {n for n, _ in LR.candidates(pl_module)}
        if self.layers is not None:
            missing = [n for n in self.layers if n not in cands]
            if missing:
                raise ValueError(
                    f"LowRankFactorization: `layers` {missing} are not Linear/Conv1d/Conv2d(groups=1) layers "
                    f"of {type(pl_module).__name__}; allowed: {sorted(cands)}"
                )
            cands &= set(self.layers)
        if not [n for n in cands if not name_matches(n, self.ignore)]:
            raise ValueError(
                f"LowRankFactorization: no Linear/Conv1d/Conv2d(groups=1) layer in {type(pl_module).__name__} "
                f"after `ignore`={self.ignore}"
            )

    def _replay_items(self, checkpoint: dict[str, Any]) -> list[tuple[int, Any]]:
        state = self._checkpoint_state(checkpoint)
        if not state or not state.get("ranks"):
            return []
        module = self._pl_module
        return [(state["order"], lambda: LR.factorize(module, ranks=state["ranks"]))]

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or trainer.current_epoch < self.start_epoch:
            return
        names_before = param_names(pl_module)
        ranks: dict[str, int] = {}
        if trainer.is_global_zero:
            self.report = LR.factorize(
                pl_module, self.energy, self.budget, self.layers, self.ignore, min_saving=self.min_saving
            )
            ranks = {r.layer: r.rank for r in self.report if r.rank is not None}
        if trainer.world_size > 1:
            ranks = self._broadcast(trainer, ranks)
            if not trainer.is_global_zero:
                LR.factorize(pl_module, ranks=ranks)
        self.ranks, self.order, self.done = ranks, trainer.global_step, True
        if ranks:
            rebuild_optimizers(trainer, pl_module, names_before)
        self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tr = self.tracker(trainer)
        vals = {"lowrank/params": float(sum(p.numel() for p in pl_module.parameters()))}
        rows = []
        for r in self.report:
            if r.rank is None:
                msg = f"LowRankFactorization: skipped {r.layer}: {r.reason}"
                if trainer.is_global_zero:
                    warnings.warn(msg, UserWarning, stacklevel=2)
            else:
                vals[f"lowrank/{r.layer}/rank"] = float(r.rank)
                vals[f"lowrank/{r.layer}/energy_kept"] = r.energy_kept
            rows.append(
                [
                    r.layer,
                    r.kind,
                    r.full_rank,
                    r.rank,
                    r.energy_kept,
                    r.params_before,
                    r.params_after,
                    r.macs_ratio,
                    r.reason,
                ]
            )
            s = torch.tensor(r.singular_values, dtype=torch.float64)
            cum = (torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-30)).tolist()
            tr.log_line_series(
                f"lowrank/{r.layer}/spectrum",
                list(range(1, len(s) + 1)),
                {"singular_value": s.tolist(), "energy_kept": cum},
                title=f"{r.layer}: spectrum (rank {r.rank})",
                xname="index",
            )
        tr.log_scalars(vals)
        tr.log_table(
            "lowrank/layers",
            [
                "layer",
                "kind",
                "full_rank",
                "rank",
                "energy_kept",
                "params_before",
                "params_after",
                "macs_ratio",
                "skipped_because",
            ],
            rows,
        )
