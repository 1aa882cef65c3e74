"""Search-space vocabulary usable inside any ``nn.Module``.

``LayerChoice``, ``InputChoice`` and ``ValueChoice`` mark decisions; ``choices``/``size``/``architectures``
read a space; ``freeze(model, arch)`` returns the plain chosen module; ``build(fn, arch)`` builds a model
with ``ValueChoice``s resolved (multi-trial search); ``fixed_arch`` is the underlying context manager.
NNI's ``LayerChoice``/``InputChoice`` (``nni.nas.nn.pytorch``) are recognised everywhere.
"""

from lightning_nas.space._api import (
    ChoiceView,
    Decision,
    architectures,
    as_choice,
    build,
    choices,
    decisions,
    freeze,
    named_choices,
    search_space,
    size,
)
from lightning_nas.space._choices import (
    ChoiceModule,
    InputChoice,
    LayerChoice,
    SelectInputs,
    ValueChoice,
    fixed_arch,
    recording,
)

__all__ = [
    "ChoiceModule",
    "ChoiceView",
    "Decision",
    "InputChoice",
    "LayerChoice",
    "SelectInputs",
    "ValueChoice",
    "architectures",
    "as_choice",
    "build",
    "choices",
    "decisions",
    "fixed_arch",
    "freeze",
    "named_choices",
    "recording",
    "search_space",
    "size",
]
