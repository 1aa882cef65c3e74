"""``AttributionMonitor``: Captum maps on a fixed probe set each N epochs, their faithfulness, and their drift."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from typing_extensions import override

from lightning_nas._modules import eval_mode
from lightning_nas._validate import check_choice, check_int, check_range, check_type
from lightning_nas.callbacks._capture import ProbeSet
from lightning_nas.callbacks._probe import ProbedCallback, ProbeSource, find_embedding, find_module
from lightning_nas.explain import attribution as A
from lightning_nas.explain._attribution_utils import TOKEN_COLUMNS, token_rows

_PREFIX = "explain/attribution"
VIEWS = ("image", "spectrogram")


class AttributionMonitor(ProbedCallback):
    """Attribute the model's decisions on a fixed validation probe set every ``every_n_epochs`` epochs.

    Each run logs heatmaps over image inputs (``explain/attribution/maps``) or a table of each sample's top
    features for vector/token inputs (``explain/attribution/top_features``); for token inputs also every token
    with its attribution (``explain/attribution/tokens``, columns ``sample, label, pred, position, token,
    attribution``; padding, the ``baseline`` id, left out), which the HTML report shows as highlighted text; the
    deletion-curve AOPC of the
    maps and of a random ordering (``.../aopc``, ``.../aopc_random``, ``.../deletion_curve``) and, once a
    reference exists, how far the maps moved from it (``.../drift_spearman``, ``.../drift_topk``,
    ``.../drift_agreement``). The reference is the first run, replaced by the last run before every change
    of the model's structure (pruning, QAT, low-rank, a NAS freeze: detected by a fingerprint of module
    types and parameter shapes) or by ``mark_reference()``.

    Args:
        method: one of ``explain.attribution.METHODS``.
        every_n_epochs: attribute after every N-th training epoch.
        n_samples: probe size, taken round-robin over classes from the validation data (fixed by ``seed``).
        target: ``"label"`` (the true class) or ``"pred"`` (the model's prediction).
        layer: Grad-CAM's conv layer, a name from ``pl_module.named_modules()`` (``"net.features.3"``).
        forward_fn: an override: ``(pl_module, x) -> (batch, classes)`` logits, with ``x`` from the raw
            validation batches. By default the probe is what the model receives (the inputs the user's own
            validation steps feed the module they call, training steps when no validation ran; labels from the
            batch) and the model is the one the step runs; sequence outputs are explained at their last position.
        batch_fn: an override: ``batch -> (x, y)`` for raw validation batches (with ``forward_fn``).
        embedding: for integer token inputs, the ``nn.Embedding`` to attribute over (auto when only one).
        n_steps: integral steps of Integrated Gradients (and GradientSHAP samples).
        internal_batch_size: bound on the batch Captum builds (memory).
        baseline: input value (or token id) meaning "absent"; used by the methods and the deletion curve.
        topk: fraction of features compared by the top-k overlap.
        faithfulness: compute AOPC each run.
        aopc_steps: deletion steps of the AOPC curve (up to half the features).
        explain: log heatmaps / top-feature tables each run.
        view: how heatmaps over ``(batch, channels, H, W)`` inputs are drawn: ``"image"`` (each input in gray under
            its map, ``explain/attribution/maps``) or ``"spectrogram"`` (inputs are ``(1, mels, frames)``
            spectrograms: low frequencies at the bottom, time in seconds at ``hop_seconds`` per frame, label and
            prediction over each panel, ``explain/attribution/spectrogram``).
        hop_seconds: seconds per spectrogram frame (``view="spectrogram"``).
        seed: picks the probe set.
        vocabulary: for token inputs, the word of each id (``vocabulary[id]``) in the token table (else ``tok<id>``).
        class_names: the name of each class, for the label and prediction columns of the token table.

    Logged under ``explain/attribution/`` each run: ``probe_acc`` (accuracy on the probe),
    ``structural_changes`` (model-structure changes seen so far), ``aopc`` and ``aopc_random`` and the line
    series ``deletion_curve`` (with ``faithfulness``), ``drift_spearman``, ``drift_topk``, ``drift_agreement``
    (once a reference exists), and with ``explain`` the image ``maps`` (``spectrogram`` with
    ``view="spectrogram"``) or the table ``top_features``.

    Math: AOPC as in ``explain.attribution.aopc``, ``1/(L+1) * sum_{k=0..L} (p_0 - p_k)`` with ``p_k`` the
    target's probability after the ``k``-th of ``L`` deletion steps; the drift scores as in
    ``explain.attribution.compare`` (Spearman correlation of ``|a|`` and ``|b|``, top-``topk`` overlap).

    Examples:
        >>> import tempfile
        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> import json, pathlib
        >>> from lightning_nas.callbacks import AttributionMonitor
        >>> from lightning_nas.data import DigitsDataModule
        >>> from lightning_nas.models import Classifier, DigitsCNN
        >>> monitor = AttributionMonitor(method="saliency", n_samples=4, aopc_steps=2)
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[monitor])
        >>> trainer.fit(Classifier(DigitsCNN(width=4)), datamodule=DigitsDataModule())
        >>> files = pathlib.Path(root, "nas_files")  # with no logger the file sink keeps everything
        >>> sorted(p.name for p in files.iterdir())
        ['images', 'index.jsonl', 'scalars.jsonl', 'series', 'summary.json']
        >>> logged = [json.loads(line) for line in (files / "scalars.jsonl").read_text().splitlines()]
        >>> sorted(k for row in logged for k in row if k.startswith("explain/"))  # doctest: +NORMALIZE_WHITESPACE
        ['explain/attribution/aopc', 'explain/attribution/aopc_random', 'explain/attribution/probe_acc',
         'explain/attribution/structural_changes']
    """

    _state_attrs = ("_probe_indices", "_probe_state", "_reference", "_last", "_changes", "_runs")

    def __init__(
        self,
        method: str = "integrated_gradients",
        every_n_epochs: int = 1,
        n_samples: int = 10,
        target: str = "label",
        layer: str | None = None,
        forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        batch_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        embedding: str | None = None,
        n_steps: int = 6,
        internal_batch_size: int = 256,
        baseline: float = 0.0,
        topk: float = 0.1,
        faithfulness: bool = True,
        aopc_steps: int = 5,
        explain: bool = True,
        view: str = "image",
        hop_seconds: float = 0.02,
        seed: int = 0,
        vocabulary: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_choice("method", method, A.METHODS)
        check_int("every_n_epochs", every_n_epochs, 1)
        check_int("n_samples", n_samples, 1)
        check_choice("target", target, ("label", "pred"))
        check_type("layer", layer, str, allow_none=True)
        if method == "grad_cam" and layer is None:
            raise ValueError("`layer` is required for method='grad_cam': name a conv layer, e.g. 'net.features.3'")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be callable, got {type(forward_fn).__name__}")
        if batch_fn is not None and not callable(batch_fn):
            raise TypeError(f"`batch_fn` must be callable, got {type(batch_fn).__name__}")
        check_type("embedding", embedding, str, allow_none=True)
        check_int("n_steps", n_steps, 1)
        check_int("internal_batch_size", internal_batch_size, 1)
        check_range("baseline", baseline)
        check_range("topk", topk, 0.0, 1.0, low_inclusive=False)
        check_type("faithfulness", faithfulness, bool)
        check_int("aopc_steps", aopc_steps, 1)
        check_type("explain", explain, bool)
        check_choice("view", view, VIEWS)
        check_range("hop_seconds", hop_seconds, 0.0, None, low_inclusive=False)
        check_int("seed", seed, 0)
        for name, names in (("vocabulary", vocabulary), ("class_names", class_names)):
            if names is not None and (isinstance(names, str) or not all(isinstance(w, str) for w in names)):
                raise TypeError(f"`{name}` must be a sequence of strings, got {type(names).__name__}")
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self.class_names = None if class_names is None else list(class_names)
        self.method, self.every_n_epochs, self.n_samples, self.target = method, every_n_epochs, n_samples, target
        self.layer_name, self.forward_fn, self.batch_fn, self.embedding_name = layer, forward_fn, batch_fn, embedding
        self.n_steps, self.internal_batch_size, self.baseline, self.topk = n_steps, internal_batch_size, baseline, topk
        self.faithfulness, self.aopc_steps, self.explain, self.seed = faithfulness, aopc_steps, explain, seed
        self.view, self.hop_seconds = view, hop_seconds
        self.probe: A.Probe | ProbeSet | None = None
        self._source = ProbeSource(type(self).__name__, n_samples, seed, forward_fn, batch_fn)
        self._probe_indices: list[int] = []
        self._probe_state: dict[str, Any] | None = None
        self._reference: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._changes = 0
        self._runs = 0
        self._pending_mark = False

    # ------------------------------------------------------------------ set-up
    def _validate_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._layer = find_module(pl_module, self.layer_name, "layer") if self.layer_name else None
        if self.embedding_name is not None:
            find_embedding(pl_module, self.embedding_name)
        if self.method == "grad_cam":
            try:
                A.check_method(self.method, self._layer, False)
            except ValueError as err:
                raise ValueError(f"{type(self).__name__}: {err} (`layer`={self.layer_name!r})") from None
        self._source.check_size(trainer, pl_module)
        if not self._source.captured:  # the overrides: the raw validation batches, now
            probe = self._source.resolve(trainer, pl_module)
            if self._probe_indices and self._probe_indices != probe.indices:
                raise ValueError(
                    f"{type(self).__name__}: the probe set differs from the checkpoint's (validation data changed?)"
                )
            self._adopt(pl_module, probe)

    @override
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure_probe(pl_module, final=False)  # checked before the first step when the sanity check fills it

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._ensure_probe(pl_module)

    def _ensure_probe(self, pl_module: L.LightningModule, final: bool = True) -> None:
        if self.probe is not None or not self._source.captured:
            return
        if self._probe_state is not None:  # resumed: the very probe of the interrupted fit
            self._source.collected(pl_module)
            probe = ProbeSet.from_state(self._probe_state)
        else:
            found = self._source.collected(pl_module, final)
            if found is None:
                return
            probe = found
            self._probe_state = probe.to_state()
        self._adopt(pl_module, probe)

    def _preview(self, pl_module: L.LightningModule) -> None:
        """No validation loop: check the model on the first training step's samples, before its backward pass."""
        probe = self._source.preview(pl_module)
        if probe is not None and self.probe is None and self._probe_state is None:
            self._adopt(pl_module, probe, keep=False)

    def _adopt(self, pl_module: L.LightningModule, probe: A.Probe | ProbeSet, keep: bool = True) -> None:
        name = type(self).__name__
        if keep:
            self.probe, self._probe_indices = probe, list(probe.indices)
        if self.target == "label" and (probe.y is None or probe.y.ndim != 1):
            raise ValueError(
                f"{name}: `target`='label' needs 1-D class labels in the validation batches; use "
                "target='pred' or pass `batch_fn=lambda batch: (x, y)` and `forward_fn`"
            )
        self._source.check(pl_module, probe)
        if self.view == "spectrogram" and (probe.is_tokens or probe.x.ndim != 4):
            raise ValueError(
                f"{name}: `view`='spectrogram' needs (batch, channels, mels, frames) float inputs, the model receives "
                f"{tuple(probe.x.shape)} {probe.x.dtype}; use view='image'"
            )
        self._embedding = find_embedding(pl_module, self.embedding_name) if probe.is_tokens else None
        if self._embedding is not None and self.embedding_name is None:
            self.embedding_name = next(n for n, m in pl_module.named_modules() if m is self._embedding)
        try:
            A.check_method(self.method, self._layer, probe.is_tokens)
        except ValueError as err:
            raise ValueError(f"{name}: {err} (`layer`={self.layer_name!r})") from None

    # ------------------------------------------------------------------ public
    def mark_reference(self, model: nn.Module | None = None) -> None:
        """Make the explanation now the reference that later runs' drift is measured against.

        With ``model`` (the LightningModule being fit), attribute it now; without, the last run becomes the
        reference (or the next run, when none has happened yet).
        """
        if model is not None:
            self._reference = self._compute(model)
        elif self._last is not None:
            self._reference = self._last
        else:
            self._pending_mark = True

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        self._ensure_probe(pl_module)  # no validation ran yet: the training steps' inputs
        if self.probe is not None:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Attribute now and log; return the scalars logged."""
        cur = self._compute(pl_module, with_faithfulness=self.faithfulness)
        assert self.probe is not None  # _compute raises without one
        self._runs += 1
        if self._last is not None and cur["fingerprint"] != self._last["fingerprint"]:
            self._changes += 1
            self._reference = self._last  # explain the change against the model just before it
        if self._reference is None or self._pending_mark:
            self._reference, self._pending_mark = cur, False
        metrics: dict[str, float] = {f"{_PREFIX}/structural_changes": float(self._changes)}
        if self.probe.y is not None and self.probe.y.ndim == 1:
            metrics[f"{_PREFIX}/probe_acc"] = float((cur["preds"] == self.probe.y).float().mean())
        if "aopc" in cur:
            metrics[f"{_PREFIX}/aopc"], metrics[f"{_PREFIX}/aopc_random"] = cur["aopc"], cur["aopc_random"]
        if self._reference is not cur:
            rho, top = A.rank_agreement(self._reference["attr"], cur["attr"], self.topk)
            finite = rho[torch.isfinite(torch.from_numpy(rho)).numpy()]
            metrics[f"{_PREFIX}/drift_spearman"] = float(finite.mean()) if finite.size else float("nan")
            metrics[f"{_PREFIX}/drift_topk"] = float(top.mean())
            metrics[f"{_PREFIX}/drift_agreement"] = float((self._reference["preds"] == cur["preds"]).float().mean())
        self._last = cur
        tracker = self.tracker(trainer)
        tracker.log_scalars(metrics)
        if "curve" in cur:
            tracker.log_line_series(
                f"{_PREFIX}/deletion_curve",
                cur["fractions"],
                {"attribution": cur["curve"], "random": cur["curve_random"]},
                title="deletion curve (target probability)",
                xname="fraction deleted",
            )
        if self.explain:
            classes = getattr(getattr(trainer, "datamodule", None), "classes", None)  # names for the panels
            self._log_maps(tracker, cur, trainer.current_epoch, classes if isinstance(classes, (list, tuple)) else None)
        return metrics

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._last is not None:
            keys = ("aopc", "aopc_random")
            self.tracker(trainer).log_summary({f"{_PREFIX}/{k}": self._last[k] for k in keys if k in self._last})

    # ------------------------------------------------------------------ internals
    def _compute(self, model: nn.Module, with_faithfulness: bool = False) -> dict[str, Any]:
        probe = self.probe
        if probe is None:
            raise RuntimeError("AttributionMonitor has no probe yet: it is chosen when the fit starts")
        with eval_mode(model):
            device = next(model.parameters(), torch.empty(0)).device
            x = probe.x.to(device)
            fwd, rest = self._source.forward(probe)
            rest = move_data_to_device(rest, device)
            preds = A.predict(model, x, fwd, additional_forward_args=rest).cpu()
            tgt = probe.y if self.target == "label" else preds
            assert tgt is not None  # target="label" is allowed only with labelled probes
            mods = dict(model.named_modules())  # by name: QAT or pruning may have swapped the module
            layer = mods.get(self.layer_name) if self.layer_name else None
            emb = (
                (mods.get(self.embedding_name) if self.embedding_name else self._embedding) if probe.is_tokens else None
            )
            with torch.inference_mode(False), torch.enable_grad():
                attr = A.attribute(
                    model,
                    x,
                    tgt.to(device),
                    self.method,
                    forward_fn=fwd,
                    layer=layer,
                    embedding=emb,
                    n_steps=self.n_steps,
                    n_shap_samples=self.n_steps,
                    internal_batch_size=self.internal_batch_size,
                    baseline=self.baseline,
                    seed=self.seed,
                    additional_forward_args=rest,
                ).cpu()
            out: dict[str, Any] = {"attr": attr, "preds": preds, "fingerprint": A.fingerprint(model)}
            if with_faithfulness:
                r = A.aopc(
                    model,
                    x,
                    attr.to(device),
                    tgt.to(device),
                    forward_fn=fwd,
                    steps=self.aopc_steps,
                    baseline=self.baseline,
                    seed=self.seed,
                    additional_forward_args=rest,
                )
                out.update(
                    aopc=r["aopc"],
                    aopc_random=r["aopc_random"],
                    fractions=r["fractions"],
                    curve=r["aopc_curve"],
                    curve_random=r["aopc_random_curve"],
                )
            return out

    def _log_maps(self, tracker: Any, cur: dict[str, Any], epoch: int, classes: Any = None) -> None:
        assert self.probe is not None  # after _compute
        x = self.probe.x
        if torch.is_floating_point(x) and x.ndim >= 3:
            y = self.probe.y
            labels = y.tolist() if y is not None and y.ndim == 1 else "-"
            caption = f"{self.method}, epoch {epoch}; labels {labels}"
            if self.view == "spectrogram":
                image = A.spectrogram_overlay(x, cur["attr"], y, cur["preds"], classes, self.hop_seconds)
                tracker.log_image(f"{_PREFIX}/spectrogram", image, caption=caption)
            else:
                tracker.log_image(f"{_PREFIX}/maps", A.overlay_grid(x, cur["attr"]), caption=caption)
        else:
            rows = A.top_features_rows(x, cur["attr"], self.probe.y, cur["preds"], k=5)
            tracker.log_table(
                f"{_PREFIX}/top_features", ["sample", "label", "pred", "rank", "feature", "value", "attribution"], rows
            )
            if not torch.is_floating_point(x) and x.ndim == 2 and cur["attr"].shape == x.shape:
                rows = token_rows(
                    x, cur["attr"], self.probe.y, cur["preds"], self.vocabulary, self.class_names, int(self.baseline)
                )
                tracker.log_table(f"{_PREFIX}/tokens", list(TOKEN_COLUMNS), rows)
