"""handgrad: neural networks from foundations, every backward pass written by hand."""

from .errors import HandgradError
from .gradcheck import CheckReport, gradcheck
from .layers import Linear, ReLU
from .losses import MSELoss
from .module import Module, Parameter, Sequential

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "HandgradError",
    "Linear",
    "MSELoss",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "__version__",
    "gradcheck",
]
