"""The lesson's names, as thin wrappers over the library's layers.

``Lin``, ``Relu``, ``Mse`` and ``Model`` behave as in the "backprop from foundations" lesson
(``Lin`` takes ready-made ``w``/``b`` tensors in the lesson's (in, out) layout; ``Model(x,
targ)`` returns the loss and ``model.backward()`` leaves ``.g`` on the input and on every
weight), without its bugs: the loss is computed from the difference, not from a stale tensor,
and a shared tensor's gradient is never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.module import Module, Parameter, Sequential

Relu = ReLU
Mse = MSELoss


class Lin(Linear):
    """``Lin(w, b)``: a :class:`Linear` around existing tensors ``w`` (in, out) and ``b`` (out,)."""

    def __init__(self, w: Tensor, b: Tensor) -> None:
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ValueError(
                f"Lin(w, b) needs w (in, out) and b (out,), got {tuple(w.shape)}, {tuple(b.shape)}"
            )
        self.in_features, self.out_features = w.shape
        self.weight, self.bias = Parameter(w), Parameter(b)


class Model(Module):
    """``Model(layers, loss)(x, targ)`` returns the loss; ``backward()`` fills every ``.g``,
    including ``x.g`` as the lesson compares it to autograd.

    ``Model.lesson(w1, b1, w2, b2)`` builds the lesson's Lin-Relu-Lin + MSE network.
    """

    no_grad_args = (1,)

    def __init__(self, layers: Sequence[Module], loss: Module) -> None:
        self.body = Sequential(*layers)
        self.loss = loss
        self._input: Tensor | None = None

    @classmethod
    def lesson(cls, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Model:
        return cls([Lin(w1, b1), Relu(), Lin(w2, b2)], Mse())

    @property
    def layers(self) -> list[Module]:
        return self.body.layers

    def forward(self, x: Tensor, targ: Tensor) -> Tensor:
        self._input = x
        return self.loss(self.body(x), targ)

    def bwd(self, out: Tensor, x: Tensor, targ: Tensor) -> None:
        dpred, _ = self.loss.backward(out.g)
        x.g = self.body.backward(dpred)

    def backward(self, dout: Tensor | None = None, *, need_input_grad: bool = True) -> tuple:
        grads = super().backward(dout, need_input_grad=need_input_grad)
        if self._input is not None and grads[0] is not None:
            self._input.g = grads[0]  # the lesson reads x_train.g after backward
        return grads
