"""The math: pure forward/backward pairs, side by side.

Each operation is two functions. ``<op>_forward`` returns the output and whatever the backward
needs (the "cache"); ``<op>_backward`` takes the gradient of the loss with respect to the output
(``dout``) and the cache, and returns the gradient with respect to each input. Nothing here
keeps state, touches ``.g`` attributes or uses autograd: layers in :mod:`handgrad.nn.layers` are
thin wrappers that store the cache between the two calls.

Conventions: ``N`` is the batch size; gradients are named ``d<name>``; a backward never
modifies ``dout`` in place (the caller may still hold it). Where a faster version of an op is
what the layers run (``fused_batchnorm_*``), the readable one stays beside it and a test holds
the two equal.
"""

from handgrad.nn.functional.activations import (
    gelu_backward,
    gelu_forward,
    general_relu_backward,
    general_relu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    mish_backward,
    mish_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    softmax_backward,
    softmax_forward,
    softplus,
    tanh_backward,
    tanh_forward,
)
from handgrad.nn.functional.conv import (
    ConvGeometry,
    col2im,
    conv2d_backward,
    conv2d_forward,
    im2col,
)
from handgrad.nn.functional.dropout import dropout_backward, dropout_forward
from handgrad.nn.functional.linear import linear_backward, linear_forward
from handgrad.nn.functional.losses import (
    cross_entropy_backward,
    cross_entropy_forward,
    mse_backward,
    mse_forward,
)
from handgrad.nn.functional.norm import (
    batchnorm_add_relu_backward,
    batchnorm_add_relu_forward,
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
    fused_batchnorm_backward,
    fused_batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from handgrad.nn.functional.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "ConvGeometry",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm_add_relu_backward",
    "batchnorm_add_relu_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "fused_batchnorm_backward",
    "fused_batchnorm_forward",
    "gelu_backward",
    "gelu_forward",
    "general_relu_backward",
    "general_relu_forward",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "im2col",
    "layernorm_backward",
    "layernorm_forward",
    "leaky_relu_backward",
    "leaky_relu_forward",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mish_backward",
    "mish_forward",
    "mse_backward",
    "mse_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "silu_backward",
    "silu_forward",
    "softmax_backward",
    "softmax_forward",
    "softplus",
    "tanh_backward",
    "tanh_forward",
]
