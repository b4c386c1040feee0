"""handgrad: neural networks from foundations, every backward pass written by hand.

The package is layered; each folder depends only on those below it (import-linter holds the
rule, see ``.importlinter``):

    app/           the command line, reports, plots, benchmarks (rich, matplotlib)
    distributed/   data-parallel training over torch.distributed
    fast/          the compiled fast path (FastStep, FastLearner)
    train/         Learner, callbacks, checkpoints, metrics, statistics
    data/  check/  interop/   datasets and loaders; the gradient checker; the PyTorch bridge
    optim/         optimizers and schedules
    nn/            Module, Parameter, the layers and their hand-written backward passes

``import handgrad`` imports none of them: each public name below is loaded on first use, so
``from handgrad import Linear`` costs what ``handgrad.nn`` costs and nothing more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from handgrad._compat import install as _install_old_paths
from handgrad._version import __version__

# Each public name and the module that defines it (relative to this package).
_PUBLIC = {
    "Module": ".nn.module",
    "Parameter": ".nn.module",
    "Sequential": ".nn.module",
    "AvgPool2d": ".nn.layers",
    "BatchNorm1d": ".nn.layers",
    "BatchNorm2d": ".nn.layers",
    "BatchNormReLU2d": ".nn.layers",
    "Conv2d": ".nn.layers",
    "Dropout": ".nn.layers",
    "Flatten": ".nn.layers",
    "GELU": ".nn.layers",
    "GeneralRelu": ".nn.layers",
    "GlobalAvgPool": ".nn.layers",
    "Identity": ".nn.layers",
    "LayerNorm": ".nn.layers",
    "LeakyReLU": ".nn.layers",
    "Linear": ".nn.layers",
    "MaxPool2d": ".nn.layers",
    "Mish": ".nn.layers",
    "ReLU": ".nn.layers",
    "ResBlock": ".nn.layers",
    "Reshape": ".nn.layers",
    "Sigmoid": ".nn.layers",
    "SiLU": ".nn.layers",
    "Softmax": ".nn.layers",
    "Tanh": ".nn.layers",
    "CrossEntropyLoss": ".nn.layers.losses",
    "LossInputError": ".nn.layers.losses",
    "MSELoss": ".nn.layers.losses",
    "init_model": ".nn.init",
    "lsuv_init": ".nn.init",
    "build_model": ".nn.models",
    "MODELS": ".nn.models",
    "Adam": ".optim.optimizers",
    "AdamW": ".optim.optimizers",
    "Optimizer": ".optim.optimizers",
    "SGD": ".optim.optimizers",
    "Constant": ".optim.schedules",
    "CosineWarmup": ".optim.schedules",
    "make_schedule": ".optim.schedules",
    "OneCycle": ".optim.schedules",
    "StepDecay": ".optim.schedules",
    "CheckReport": ".check",
    "gradcheck": ".check",
    "Activation": ".check.symbolic",
    "DataLoader": ".data",
    "Dataset": ".data",
    "load_dataset": ".data",
    "Split": ".data",
    "Callback": ".train.learner",
    "CancelBatchException": ".train.learner",
    "CancelEpochException": ".train.learner",
    "CancelFitException": ".train.learner",
    "Learner": ".train.learner",
    "Checkpointer": ".train.callbacks",
    "EarlyStopping": ".train.callbacks",
    "LRScheduler": ".train.callbacks",
    "Metrics": ".train.callbacks",
    "NonFiniteError": ".train.callbacks",
    "NonFiniteGuard": ".train.callbacks",
    "Progress": ".app.progress",
    "Recorder": ".train.callbacks",
    "load_checkpoint": ".train.checkpoint",
    "save_checkpoint": ".train.checkpoint",
    "accuracy": ".train.metrics",
    "confusion_matrix": ".train.metrics",
    "ActivationStats": ".train.stats",
    "dead_units": ".train.stats",
    "GradientStats": ".train.stats",
    "LayerStats": ".train.stats",
    "StatsHooks": ".train.stats",
    "resolve_device": ".train.devices",
    "as_function": ".interop.torch",
    "from_torch": ".interop.torch",
    "to_torch": ".interop.torch",
    "FastStep": ".fast",
    "FastLearner": ".fast.learner",
    "write_report": ".app.report",
    "HandgradError": ".errors",
}

_install_old_paths()


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    raise AttributeError(f"module 'handgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from handgrad.app.progress import Progress
    from handgrad.app.report import write_report
    from handgrad.check import CheckReport, gradcheck
    from handgrad.check.symbolic import Activation
    from handgrad.data import DataLoader, Dataset, Split, load_dataset
    from handgrad.errors import HandgradError
    from handgrad.fast import FastStep
    from handgrad.fast.learner import FastLearner
    from handgrad.interop.torch import as_function, from_torch, to_torch
    from handgrad.nn.init import init_model, lsuv_init
    from handgrad.nn.layers import (
        GELU,
        AvgPool2d,
        BatchNorm1d,
        BatchNorm2d,
        BatchNormReLU2d,
        Conv2d,
        Dropout,
        Flatten,
        GeneralRelu,
        GlobalAvgPool,
        Identity,
        LayerNorm,
        LeakyReLU,
        Linear,
        MaxPool2d,
        Mish,
        ReLU,
        ResBlock,
        Reshape,
        Sigmoid,
        SiLU,
        Softmax,
        Tanh,
    )
    from handgrad.nn.layers.losses import CrossEntropyLoss, LossInputError, MSELoss
    from handgrad.nn.models import MODELS, build_model
    from handgrad.nn.module import Module, Parameter, Sequential
    from handgrad.optim.optimizers import SGD, Adam, AdamW, Optimizer
    from handgrad.optim.schedules import Constant, CosineWarmup, OneCycle, StepDecay, make_schedule
    from handgrad.train.callbacks import (
        Checkpointer,
        EarlyStopping,
        LRScheduler,
        Metrics,
        NonFiniteError,
        NonFiniteGuard,
        Recorder,
    )
    from handgrad.train.checkpoint import load_checkpoint, save_checkpoint
    from handgrad.train.devices import resolve_device
    from handgrad.train.learner import (
        Callback,
        CancelBatchException,
        CancelEpochException,
        CancelFitException,
        Learner,
    )
    from handgrad.train.metrics import accuracy, confusion_matrix
    from handgrad.train.stats import (
        ActivationStats,
        GradientStats,
        LayerStats,
        StatsHooks,
        dead_units,
    )


__all__ = [
    "GELU",
    "MODELS",
    "SGD",
    "Activation",
    "ActivationStats",
    "Adam",
    "AdamW",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormReLU2d",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CheckReport",
    "Checkpointer",
    "Constant",
    "Conv2d",
    "CosineWarmup",
    "CrossEntropyLoss",
    "DataLoader",
    "Dataset",
    "Dropout",
    "EarlyStopping",
    "FastLearner",
    "FastStep",
    "Flatten",
    "GeneralRelu",
    "GlobalAvgPool",
    "GradientStats",
    "HandgradError",
    "Identity",
    "LRScheduler",
    "LayerNorm",
    "LayerStats",
    "LeakyReLU",
    "Learner",
    "Linear",
    "LossInputError",
    "MSELoss",
    "MaxPool2d",
    "Metrics",
    "Mish",
    "Module",
    "NonFiniteError",
    "NonFiniteGuard",
    "OneCycle",
    "Optimizer",
    "Parameter",
    "Progress",
    "ReLU",
    "Recorder",
    "ResBlock",
    "Reshape",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Split",
    "StatsHooks",
    "StepDecay",
    "Tanh",
    "__version__",
    "accuracy",
    "as_function",
    "build_model",
    "confusion_matrix",
    "dead_units",
    "from_torch",
    "gradcheck",
    "init_model",
    "load_checkpoint",
    "load_dataset",
    "lsuv_init",
    "make_schedule",
    "resolve_device",
    "save_checkpoint",
    "to_torch",
    "write_report",
]
