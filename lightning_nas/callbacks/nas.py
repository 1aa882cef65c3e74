"""One-shot NAS on the user's own ``trainer.fit``: ``DifferentiableNAS`` (DARTS, GDAS) and ``SubnetSampling`` (SPOS).

Both turn every ``LayerChoice``/``InputChoice`` of the module into a mixed op in ``setup()`` (before
``configure_optimizers``, so the candidates' weights are in the user's optimizer) and put the original choice
modules back at the end of training with the found candidate active. The algorithms live in
``lightning_nas.search.oneshot``; the explanations in ``lightning_nas.explain.architecture``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lightning_nas._validate import check_choice, check_int, check_range, check_type
from lightning_nas.callbacks._oneshot import OneShotCallback, first_loader
from lightning_nas.explain import architecture as xarch
from lightning_nas.search.oneshot import (
    REMEDIES,
    SAMPLINGS,
    evolutionary_search,
    gdas_temperature,
    recalibrate_batchnorm,
)


class DifferentiableNAS(OneShotCallback):
    """Differentiable architecture search (DARTS, first order; GDAS) inside an ordinary ``trainer.fit``.

    Before each of the user's weight steps, one architecture step updates the logits ``alpha`` (held by the
    callback, with their own Adam optimizer) on a held-out batch: the next validation batch, or the second
    half of the training batch when there is no validation loader. The loss is the user's ``training_step``
    output (its logging is silenced for that call).

    Args:
        mode: ``"darts"`` (softmax mixture of all candidates) or ``"gdas"`` (one Gumbel-sampled path per step,
            straight-through gradient to ``alpha``, temperature annealed linearly ``tau_max -> tau_min``).
        arch_lr: Adam learning rate of ``alpha``, in (0, 1].
        arch_weight_decay: L2 on ``alpha``, in [0, 1).
        tau_max: GDAS start temperature, in (0, 100].
        tau_min: GDAS end temperature, in (0, tau_max].
        remedy: anti-collapse remedy: ``"darts-"`` (auxiliary skip ``beta*x``, ``beta`` 1 -> 0; Chu et al.
            2021), ``"beta-decay"`` (``lambda * mean logsumexp(alpha)``; Ye et al. 2022) or ``"none"``.
        beta_decay_weight: final ``lambda`` of ``"beta-decay"``, in [0, 100].
        start_epoch: the first epoch in which ``alpha`` moves (the epochs before train the weights only).
        order: 1 (first-order DARTS) or 2 (second order, DARTS only: the held-out loss is taken after a virtual
            weight step, with the finite-difference Hessian-vector product of Liu et al. 2019; ~4x the cost).
        unrolled_lr: learning rate ``xi`` of the virtual step (``None``: the user's optimizer's current lr).
        ablation_batches: validation batches for the final op-ablation (0 disables it).
        seed: seed of the path sampler (``None``: torch's initial seed on rank 0, broadcast).
        recalibrate_bn: ``best_model()`` re-estimates BatchNorm statistics for the exported architecture.
        bn_batches: training batches (the first ones of the loader) used for that.

    Logged every epoch: ``nas/<label>/<candidate>`` (probability), ``nas/<label>/entropy``, ``nas/tau`` (GDAS),
    line series ``nas/<label>/history``; at the end the tables ``nas/decisions`` and ``nas/ablation`` and the
    summary ``nas/arch/<label>``, ``nas/reason/<label>``.

    Examples:
        Search one decision while an ordinary LightningModule trains (a tiny fit; give it epochs in earnest):

        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> from lightning_nas.callbacks import DifferentiableNAS
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> nas = DifferentiableNAS(mode="darts", ablation_batches=1, bn_batches=1)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp(), callbacks=[nas])
        >>> trainer.fit(Classifier(net), datamodule=DigitsDataModule())
        >>> arch = nas.export()  # the chosen candidate of each decision
        >>> arch  # doctest: +ELLIPSIS
        {'block1': '...'}
        >>> print(nas.reasons()["block1"])  # doctest: +ELLIPSIS
        block1: ... chosen (probability 0.5..., ... over ...; entropy 0.69); removing ... changes supernet val loss ...
        >>> final = space.freeze(net, arch)  # a plain nn.Module: the choice replaced by its winner
        >>> type(final[1]).__name__ in ("Conv2d", "Identity")
        True
    """

    def __init__(
        self,
        mode: str = "darts",
        arch_lr: float = 3e-3,
        arch_weight_decay: float = 1e-3,
        tau_max: float = 10.0,
        tau_min: float = 0.1,
        remedy: str = "none",
        beta_decay_weight: float = 1.0,
        start_epoch: int = 0,
        ablation_batches: int = 4,
        seed: int | None = None,
        order: int = 1,
        unrolled_lr: float | None = None,
        recalibrate_bn: bool = True,
        bn_batches: int = 20,
    ) -> None:
        super().__init__(seed, recalibrate_bn, bn_batches)
        self._mode = self.mode = check_choice("mode", mode, ("darts", "gdas"))
        self.arch_lr = check_range("arch_lr", arch_lr, 0.0, 1.0, low_inclusive=False)
        self.arch_weight_decay = check_range("arch_weight_decay", arch_weight_decay, 0.0, 1.0, high_inclusive=False)
        self.tau_max = check_range("tau_max", tau_max, 0.0, 100.0, low_inclusive=False)
        self.tau_min = check_range("tau_min", tau_min, 0.0, tau_max, low_inclusive=False)
        self.remedy = check_choice("remedy", remedy, REMEDIES)
        self.beta_decay_weight = check_range("beta_decay_weight", beta_decay_weight, 0.0, 100.0)
        self.start_epoch = check_int("start_epoch", start_epoch, 0)
        self.ablation_batches = check_int("ablation_batches", ablation_batches, 0)
        self.order = check_choice("order", order, (1, 2))
        if order == 2 and mode != "darts":
            raise ValueError(f"`order`=2 (second-order DARTS) needs mode='darts', got mode={mode!r}")
        self.unrolled_lr = None if unrolled_lr is None else check_range("unrolled_lr", unrolled_lr, 0.0, 10.0)

    def _supernet_kwargs(self) -> dict[str, Any]:
        return {
            "arch_lr": self.arch_lr,
            "arch_weight_decay": self.arch_weight_decay,
            "tau": self.tau_max,
            "remedy": self.remedy,
            "beta_decay_weight": self.beta_decay_weight,
        }

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        sn = self._sn
        sn.set_progress(trainer.global_step / max(1, trainer.estimated_stepping_batches))
        sn.tau = gdas_temperature(self.tau_max, self.tau_min, sn.progress)
        if trainer.current_epoch >= self.start_epoch:
            held = self._held_out(trainer, batch)
            kwargs: dict[str, Any] = {}
            if self.order == 2:
                part = batch if self._val_loader is not None else self._first_half(batch)
                xi = (
                    self.unrolled_lr
                    if self.unrolled_lr is not None
                    else float(trainer.optimizers[0].param_groups[0]["lr"])
                )
                kwargs = {
                    "train_loss_fn": lambda: self._loss(pl_module, part, batch_idx),
                    "xi": xi,
                    "weights": [p for p in pl_module.parameters() if p.requires_grad],
                }
            with torch.enable_grad():
                sn.arch_step(lambda: self._loss(pl_module, held, batch_idx), reduce=self._reduce(trainer), **kwargs)
        if self.mode == "gdas":
            sn.resample()  # the path of the weight step

    def _epoch_done(self, trainer: L.Trainer) -> None:
        probs = xarch.probabilities(self._sn.alpha, self._sn.names)
        self._log_probabilities(trainer, probs, {"nas/tau": self._sn.tau} if self.mode == "gdas" else {})

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sn = self._sn
        self._keep_bn_batches(trainer)
        sn.set_progress(1.0)
        if self.ablation_batches:
            batches = self._eval_batches(trainer, self.ablation_batches)

            def evaluate(label: str | None, cand: str | None) -> float:
                sn.removed = {} if label is None else {label: sn.names[label].index(cand)}
                try:
                    return self._mean_loss(trainer, pl_module, batches)
                finally:
                    sn.removed = {}

            self._ablation = xarch.op_ablation(evaluate, sn.names)
        self._log_final(trainer, xarch.probabilities(sn.alpha, sn.names), "probability")
        sn.restore(self.export())


class SubnetSampling(OneShotCallback):
    """Single-path one-shot search (SPOS): one sampled path per training step (fair or uniform), then evolution.

    At the end of training an evolutionary search scores subnets of the trained supernet by their mean
    loss (the user's ``training_step`` output) on validation batches, after re-estimating BatchNorm
    statistics for each subnet on training batches. ``export()`` returns the best subnet.

    Args:
        population: architectures per generation (>= 2).
        generations: evolution rounds after the initial population (>= 0).
        mutation_prob: chance that a child's decision is resampled, in [0, 1].
        calib_batches: training batches for each subnet's BatchNorm recalibration (>= 1).
        eval_batches: validation batches scoring each subnet (>= 1).
        seed: seed of path sampling and evolution (``None``: torch's initial seed on rank 0, broadcast).
        score_all: also score every subnet of the space (small spaces; ``all_scores`` then ranks them all).
        sampling: ``"fair"`` (default; each decision cycles through random permutations of its candidates, so
            every candidate gets the same number of steps: FairNAS' strict fairness, Chu et al. 2021) or
            ``"uniform"`` (independent uniform draws per step, as in the SPOS paper).
        recalibrate_bn: ``best_model()`` re-estimates BatchNorm statistics for the exported architecture.
        bn_batches: training batches (the first ones of the loader) used for that.

    Logged at the end: ``nas/<label>/<candidate>`` (share of the candidate among the final population),
    ``nas/<label>/entropy``, tables ``nas/decisions``, ``nas/ablation`` (val-loss change when the winner's
    decision is switched to each candidate), ``nas/subnets`` (every scored subnet), summary ``nas/arch/*``.

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_nas import space
        >>> from lightning_nas.callbacks import SubnetSampling
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1),
        ...     space.LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, label="block1"),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> spos = SubnetSampling(population=2, generations=1, calib_batches=1, eval_batches=1, seed=0, bn_batches=1)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=tempfile.mkdtemp(), callbacks=[spos])
        >>> trainer.fit(Classifier(net), datamodule=DigitsDataModule())
        >>> spos.export()  # doctest: +ELLIPSIS
        {'block1': '...'}
    """

    _mode = "spos"

    def _supernet_kwargs(self) -> dict[str, Any]:
        return {"sampling": self.sampling}

    def __init__(
        self,
        population: int = 10,
        generations: int = 5,
        mutation_prob: float = 0.3,
        calib_batches: int = 5,
        eval_batches: int = 4,
        seed: int | None = None,
        score_all: bool = False,
        sampling: str = "fair",
        recalibrate_bn: bool = True,
        bn_batches: int = 20,
    ) -> None:
        super().__init__(seed, recalibrate_bn, bn_batches)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.score_all = check_type("score_all", score_all, bool)
        self.all_scores: list[tuple[dict[str, str], float]] = []
        self.population = check_int("population", population, 2)
        self.generations = check_int("generations", generations, 0)
        self.mutation_prob = check_range("mutation_prob", mutation_prob, 0.0, 1.0)
        self.calib_batches = check_int("calib_batches", calib_batches, 1)
        self.eval_batches = check_int("eval_batches", eval_batches, 1)
        self._arch: dict[str, str] | None = None
        self.scored: list[tuple[dict[str, str], float]] = []

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sn.resample()

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_gen = torch.Generator().manual_seed(
            int(self._sn.generator.initial_seed()) + 7919 * (trainer.current_epoch + 1)
        )

    @override
    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        sn = self._sn
        for lb in sn.labels:  # a deterministic path per validation batch, off the training generator
            sn.path[lb] = int(torch.randint(len(sn.names[lb]), (1,), generator=self._val_gen))

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, arch: Mapping[str, str]) -> float:
        """``-(mean val loss)`` of one subnet with inherited weights and recalibrated BatchNorm."""
        sn = self._sn
        sn.set_fixed(arch)
        try:
            pl_module.eval()
            recalibrate_batchnorm(pl_module, lambda b: self._loss(pl_module, b, 0), self._calib)
            return -self._mean_loss(trainer, pl_module, self._evalb)
        finally:
            sn.set_fixed(None)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sn = self._sn
        self._keep_bn_batches(trainer)
        loader = first_loader(trainer.train_dataloader)
        self._calib = [trainer.strategy.batch_to_device(b) for b in itertools.islice(iter(loader), self.calib_batches)]
        self._evalb = self._eval_batches(trainer, self.eval_batches)
        was = pl_module.training
        bn_state = {k: v.clone() for k, v in pl_module.state_dict().items() if "running_" in k or "num_batches" in k}
        cache: dict[tuple, float] = {}

        def score(arch: Mapping[str, str]) -> float:
            key = tuple(sorted(arch.items()))
            if key not in cache:
                cache[key] = self.score(trainer, pl_module, arch)
            return cache[key]

        evo_gen = torch.Generator().manual_seed(sn.generator.initial_seed() + 1)  # not the training stream
        best, self.scored = evolutionary_search(
            sn.names,
            score,
            population=self.population,
            generations=self.generations,
            mutation_prob=self.mutation_prob,
            generator=evo_gen,
        )
        self._arch = best
        top = [a for a, _ in sorted(self.scored, key=lambda t: -t[1])[: self.population]]
        probs = {lb: {c: sum(a[lb] == c for a in top) / len(top) for c in sn.names[lb]} for lb in sn.labels}
        if self.score_all:
            grid = [dict(zip(sn.labels, combo)) for combo in itertools.product(*(sn.names[lb] for lb in sn.labels))]
            self.all_scores = [(a, score(a)) for a in grid]
        self._ablation = xarch.switch_ablation(score, best, {lb: sn.names[lb] for lb in sn.labels})
        pl_module.load_state_dict(bn_state, strict=False)
        pl_module.train(was)
        self._log_probabilities(trainer, probs, {}, record=False)
        tracker = self.tracker(trainer)
        tracker.log_table("nas/subnets", ["arch", "score"], [[str(a), s] for a, s in self.scored])
        self._log_final(trainer, probs, "population_share", "switch")
        sn.restore(best)

    def export(self) -> dict[str, str]:
        if self._arch is None:
            raise RuntimeError("SubnetSampling.export(): call trainer.fit first (the search runs at the end)")
        return dict(self._arch)

    def _extra_state(self) -> dict[str, Any]:
        return {"arch": self._arch, "scored": list(self.scored)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._arch, self.scored = state.get("arch"), list(state.get("scored", []))
