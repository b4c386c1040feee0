"""The math: pure forward/backward pairs, side by side.

Each operation is two functions. ``<op>_forward`` returns the output and whatever the backward
needs (the "cache"); ``<op>_backward`` takes the gradient of the loss with respect to the output
(``dout``) and the cache, and returns the gradient with respect to each input. Nothing here
keeps state, touches ``.g`` attributes or uses autograd: layers in :mod:`handgrad.layers` are
thin wrappers that store the cache between the two calls.

Conventions: ``N`` is the batch size; gradients are named ``d<name>``; a backward never
modifies ``dout`` in place (the caller may still hold it).
"""

from .activations import relu_backward, relu_forward
from .linear import linear_backward, linear_forward
from .losses import cross_entropy_backward, cross_entropy_forward, mse_backward, mse_forward

__all__ = [
    "cross_entropy_backward",
    "cross_entropy_forward",
    "linear_backward",
    "linear_forward",
    "mse_backward",
    "mse_forward",
    "relu_backward",
    "relu_forward",
]
