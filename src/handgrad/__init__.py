"""handgrad: neural networks from foundations, every backward pass written by hand."""

from .data import DataLoader, Dataset, Split, load_dataset
from .errors import HandgradError
from .gradcheck import CheckReport, gradcheck
from .layers import Linear, ReLU
from .losses import CrossEntropyLoss, LossInputError, MSELoss
from .metrics import accuracy, confusion_matrix
from .module import Module, Parameter, Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .schedules import Constant, CosineWarmup, OneCycle, StepDecay, make_schedule

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CheckReport",
    "Constant",
    "CosineWarmup",
    "CrossEntropyLoss",
    "DataLoader",
    "Dataset",
    "HandgradError",
    "Linear",
    "LossInputError",
    "MSELoss",
    "Module",
    "OneCycle",
    "Optimizer",
    "Parameter",
    "ReLU",
    "Sequential",
    "Split",
    "StepDecay",
    "__version__",
    "accuracy",
    "confusion_matrix",
    "gradcheck",
    "load_dataset",
    "make_schedule",
]
