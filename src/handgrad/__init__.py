"""handgrad: neural networks from foundations, every backward pass written by hand."""

__version__ = "0.1.0"  # first, so submodules may import it


from .bridge import as_function, from_torch, to_torch
from .callbacks import (
    Checkpointer,
    EarlyStopping,
    LRScheduler,
    Metrics,
    NonFiniteError,
    NonFiniteGuard,
    Progress,
    Recorder,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataLoader, Dataset, Split, load_dataset
from .devices import resolve_device
from .errors import HandgradError
from .fast import FastStep
from .fast.learner import FastLearner
from .gradcheck import CheckReport, gradcheck
from .init import init_model, lsuv_init
from .layers import (
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
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .learner import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
)
from .losses import CrossEntropyLoss, LossInputError, MSELoss
from .metrics import accuracy, confusion_matrix
from .models import MODELS, build_model
from .module import Module, Parameter, Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .report import write_report
from .schedules import Constant, CosineWarmup, OneCycle, StepDecay, make_schedule
from .stats import ActivationStats, GradientStats, LayerStats, StatsHooks, dead_units


def __getattr__(name: str) -> object:
    # Activation needs sympy, which takes seconds to import: load it only when asked for.
    if name == "Activation":
        from .symbolic import Activation

        return Activation
    raise AttributeError(f"module 'handgrad' has no attribute {name!r}")


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
