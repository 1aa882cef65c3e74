"""Knowledge distillation (Hinton et al., 2015) and feature distillation (FitNets), in plain torch.

* Logit distillation: ``L_kd = T^2 * KL(p_t || p_s)`` with ``p = softmax(z / T)`` over the last dimension
  (other dimensions are flattened into the batch, so sequence models work), averaged over rows. ``T^2`` keeps
  the gradient scale independent of ``T``. The training loss becomes ``(1 - alpha) * L_task + alpha * L_kd``.
* Feature distillation: ``L_feat = mean((A(f_s) - f_t)^2)`` between a student and a teacher layer output,
  ``A`` a learnable 1x1 map over the channel dimension (dim 1), the student map average-pooled to the
  teacher's spatial size when they differ.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, mean over rows (all but the last dimension).

    Math: with ``p_t = softmax(z_t / T)`` and ``p_s = softmax(z_s / T)`` over the last dimension,
    ``L_kd = T^2 * sum_c p_t[c] * (log p_t[c] - log p_s[c])``. The ``T^2`` keeps the gradients of the soft targets
    on the scale of the hard-label loss whatever ``T`` is (Hinton et al. 2015); ``KnowledgeDistillation`` adds
    ``alpha * L_kd`` to the task loss, which keeps weight ``1 - alpha``.

    Args:
        student_logits: ``z_s``, ``(..., classes)``; gradients flow into it.
        teacher_logits: ``z_t``, same shape (treated as constants by the caller).
        temperature: ``T > 0``; larger spreads the teacher's probability over more classes.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import kd_loss
        >>> z_teacher = torch.tensor([[4.0, 1.0, 0.0]])
        >>> float(kd_loss(z_teacher, z_teacher))  # the student agrees with the teacher
        0.0
        >>> round(float(kd_loss(torch.zeros(1, 3), z_teacher, temperature=1.0)), 4)  # KL(p_t || uniform)
        0.8243
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    c = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.reshape(-1, c).float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.reshape(-1, c).float().detach() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def layer_width(module: nn.Module) -> int | None:
    """Channels of ``module``'s output, read from its last Conv/Linear/BatchNorm/LayerNorm (``None``: unknown).

    Examples:
        >>> from torch import nn
        >>> from lightning_nas.compress.distill import layer_width
        >>> layer_width(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))
        8
        >>> layer_width(nn.ReLU()) is None
        True
    """
    width = None
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            width = m.out_channels
        elif isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            width = m.num_features
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            width = m.normalized_shape[0]
    return width


class FeatureAdapter(nn.Module):
    """Learnable ``c_student -> c_teacher`` 1x1 map over dim 1 (any rank >= 2), identity-initialised when the
    widths match; pools the student map to the teacher's spatial size first.

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import FeatureAdapter
        >>> f_teacher = torch.rand(2, 16, 2, 2)
        >>> FeatureAdapter(8, 16)(torch.rand(2, 8, 4, 4), like=f_teacher).shape  # pooled to 2x2, then mapped
        torch.Size([2, 16, 2, 2])
        >>> f = torch.rand(2, 8)
        >>> torch.equal(FeatureAdapter(8, 8)(f, like=f), f)  # identity-initialised when the widths match
        True
    """

    def __init__(self, c_student: int, c_teacher: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_teacher, c_student))
        self.bias = nn.Parameter(torch.zeros(c_teacher))
        if c_student == c_teacher:
            nn.init.eye_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, f_student: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        f = f_student
        size: Any = like.shape[2:]  # a torch.Size of the right length; torch types each pool's size as a fixed tuple
        if f.dim() > 2 and f.shape[2:] != size:
            f = (
                F.adaptive_avg_pool1d(f, size)
                if f.dim() == 3
                else (F.adaptive_avg_pool2d(f, size) if f.dim() == 4 else F.adaptive_avg_pool3d(f, size))
            )
        out = torch.einsum("oc,nc...->no...", self.weight, f)
        return out + self.bias.view(1, -1, *([1] * (f.dim() - 2)))


def feature_loss(adapter: FeatureAdapter, f_student: torch.Tensor, f_teacher: torch.Tensor) -> torch.Tensor:
    """``mean((A(f_s) - f_t)^2)``; the teacher feature is a constant (it may come from ``inference_mode``: the
    subtraction keeps no reference to it for the backward pass, which ``mse_loss`` would).

    Examples:
        >>> import torch
        >>> from lightning_nas.compress import FeatureAdapter, feature_loss
        >>> adapter = FeatureAdapter(8, 16)  # student has 8 channels, teacher 16
        >>> f_student, f_teacher = torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)
        >>> loss = feature_loss(adapter, f_student, f_teacher)  # student map pooled to 2x2 first
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """
    return (adapter(f_student, f_teacher).float() - f_teacher.detach().float()).pow(2).mean()


def load_teacher(teacher: nn.Module | str | Path, architecture: nn.Module | None = None) -> nn.Module:
    """The teacher in eval mode with gradients off.

    ``teacher`` is a module, or the path of a checkpoint read with ``torch.load(weights_only=True)`` (a plain
    state dict or a Lightning checkpoint's ``"state_dict"``) into ``architecture``. Raises ``ValueError`` for
    a file that is not a state dict, needs pickle to load, or does not fit ``architecture``.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import torch
        >>> from lightning_nas.compress import load_teacher
        >>> from lightning_nas.models import DigitsCNN
        >>> path = os.path.join(tempfile.mkdtemp(), "teacher.pt")
        >>> torch.save(DigitsCNN(width=8).state_dict(), path)
        >>> teacher = load_teacher(path, DigitsCNN(width=8))  # weights_only=True: tensors, never code
        >>> teacher.training, any(p.requires_grad for p in teacher.parameters())
        (False, False)
    """
    if isinstance(teacher, nn.Module):
        model = teacher
    elif isinstance(teacher, (str, Path)):
        if architecture is None:
            raise ValueError(
                f"`teacher` is a checkpoint path ({str(teacher)!r}): give the module to load it into "
                "(`teacher_architecture`)"
            )
        try:
            state = torch.load(str(teacher), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"`teacher` checkpoint {str(teacher)!r} does not exist") from None
        except Exception as exc:
            raise ValueError(
                f"`teacher` checkpoint {str(teacher)!r} cannot be loaded with weights_only=True (it needs "
                f"pickle or is not a torch file): {str(exc).splitlines()[0][:200]}. Allowed: a state "
                "dict saved with torch.save(model.state_dict(), path) or a Lightning checkpoint"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise ValueError(
                f"`teacher` checkpoint {str(teacher)!r} is not a state dict (a mapping of names to "
                f"tensors), got {type(state).__name__}"
            )
        model = copy.deepcopy(architecture)
        own = set(model.state_dict())
        if not own <= set(state):  # a Lightning checkpoint of a wrapper: strip the common prefix ("net.")
            for prefix in sorted({k.split(".", 1)[0] + "." for k in state}):
                stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if own <= set(stripped):
                    state = stripped
                    break
        try:
            model.load_state_dict({k: v for k, v in state.items() if k in own})
        except RuntimeError as exc:
            raise ValueError(
                f"`teacher` checkpoint {str(teacher)!r} does not fit {type(model).__name__}: {str(exc)[:300]}"
            ) from None
    else:
        raise TypeError(f"`teacher` must be an nn.Module or a checkpoint path, got {type(teacher).__name__}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


__all__ = ["FeatureAdapter", "feature_loss", "kd_loss", "layer_width", "load_teacher"]
