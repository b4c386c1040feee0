"""The core: ``Module`` and ``Parameter``, the layers (losses too) and their hand-written
backward passes, initialisation and the models. Needs torch only: no rich, matplotlib, sympy
or safetensors (a test and an import-linter contract hold that).

Where things are: the math of each op, forward and backward as pure functions, in
:mod:`.functional`; the layers, thin stateful wrappers over it, in :mod:`.layers`.
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
