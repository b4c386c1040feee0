"""Layers: thin stateful wrappers over :mod:`handgrad.functional`, one module per idea.

Each class holds its parameters, calls one forward/backward pair of ``functional`` and keeps,
via ``save_for_backward``, what the backward needs.
"""

from .activations import ReLU
from .linear import Linear

__all__ = ["Linear", "ReLU"]
