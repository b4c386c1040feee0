"""The core: ``Module`` and ``Parameter``, the layers (losses too) and their hand-written
backward passes, initialisation and the models. Needs torch only: no rich, matplotlib, sympy
or safetensors (a test and an import-linter contract hold that).

Where things are, bottom up: :mod:`.module` (``Module``, ``Parameter``); the math of each op,
forward and backward as pure functions, in :mod:`.functional`; drawing initial weights in
:mod:`.weights`; the layers, thin stateful wrappers over both, in :mod:`.layers`; above them,
:mod:`.init` (initialising a built network) and :mod:`.models` (the recipes).
"""

from handgrad.nn.init import init_model, lsuv_init
from handgrad.nn.layers import *  # noqa: F403 (the layers' own __all__)
from handgrad.nn.layers import __all__ as _layers
from handgrad.nn.layers.losses import CrossEntropyLoss, LossInputError, MSELoss
from handgrad.nn.models import MODELS, build_model
from handgrad.nn.module import Module, Parameter, Sequential

__all__ = [
    *_layers,
    "MODELS",
    "CrossEntropyLoss",
    "LossInputError",
    "MSELoss",
    "Module",
    "Parameter",
    "Sequential",
    "build_model",
    "init_model",
    "lsuv_init",
]
