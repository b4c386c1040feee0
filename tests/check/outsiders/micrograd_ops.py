"""micrograd-style elementwise ops as small modules: the forward builds a ``_backward``
closure over its inputs and output, and ``backward()`` runs it (out.g in, a.g / b.g out)."""

import torch


class Op:
    def backward(self):
        self._backward()


class Mul(Op):
    def __call__(self, a, b):
        out = a * b

        def _backward():
            a.g = b * out.g
            b.g = a * out.g

        self._backward, self.out = _backward, out
        return out


class MulWrongInput(Op):
    """BUG: copy-paste, b's gradient written into a."""

    def __call__(self, a, b):
        out = a * b

        def _backward():
            a.g = b * out.g
            a.g = a * out.g

        self._backward, self.out = _backward, out
        return out


class Add(Op):
    """``a + b`` with b broadcast over the rows."""

    def __call__(self, a, b):
        out = a + b

        def _backward():
            a.g = out.g
            b.g = out.g.sum(0)

        self._backward, self.out = _backward, out
        return out


class AddNotSummed(Op):
    """BUG: the broadcast operand's gradient is not summed."""

    def __call__(self, a, b):
        out = a + b

        def _backward():
            a.g = out.g
            b.g = out.g

        self._backward, self.out = _backward, out
        return out


class Sub(Op):
    def __call__(self, a, b):
        out = a - b

        def _backward():
            a.g = out.g
            b.g = -out.g

        self._backward, self.out = _backward, out
        return out


class SubSignLost(Op):
    """BUG: the subtrahend's gradient has the wrong sign."""

    def __call__(self, a, b):
        out = a - b

        def _backward():
            a.g = out.g
            b.g = out.g

        self._backward, self.out = _backward, out
        return out


class Max(Op):
    def __call__(self, a, b):
        out = torch.maximum(a, b)

        def _backward():
            a.g = out.g * (a > b)
            b.g = out.g * (a <= b)

        self._backward, self.out = _backward, out
        return out


class MaxSameMask(Op):
    """BUG: both inputs get a's mask."""

    def __call__(self, a, b):
        out = torch.maximum(a, b)

        def _backward():
            a.g = out.g * (a > b)
            b.g = out.g * (a > b)

        self._backward, self.out = _backward, out
        return out


class Pow(Op):
    def __init__(self, k):
        self.k = k

    def __call__(self, a):
        out = a**self.k

        def _backward():
            a.g = self.k * a ** (self.k - 1) * out.g

        self._backward, self.out = _backward, out
        return out


class PowOffByOne(Pow):
    """BUG: k * a**k instead of k * a**(k-1)."""

    def __call__(self, a):
        out = a**self.k

        def _backward():
            a.g = self.k * a**self.k * out.g

        self._backward, self.out = _backward, out
        return out


class Tanh(Op):
    def __call__(self, a):
        out = a.tanh()

        def _backward():
            a.g = (1 - out**2) * out.g

        self._backward, self.out = _backward, out
        return out


class TanhWrongSign(Op):
    """BUG: (out**2 - 1) instead of (1 - out**2)."""

    def __call__(self, a):
        out = a.tanh()

        def _backward():
            a.g = (out**2 - 1) * out.g

        self._backward, self.out = _backward, out
        return out


class Exp(Op):
    def __call__(self, a):
        out = a.exp()

        def _backward():
            a.g = out * out.g

        self._backward, self.out = _backward, out
        return out


class ExpPlusEquals(Op):
    """BUG: micrograd's ``+=`` kept, but here a.g starts as None."""

    def __call__(self, a):
        out = a.exp()

        def _backward():
            a.g += out * out.g

        self._backward, self.out = _backward, out
        return out


class Softplus(Op):
    """log(1 + exp(a))."""

    def __call__(self, a):
        out = torch.log(1 + a.exp())

        def _backward():
            a.g = a.exp() / (1 + a.exp()) * out.g

        self._backward, self.out = _backward, out
        return out


class SoftplusNoChain(Op):
    """BUG: d log(u)/du = 1/u, but the du/da = exp(a) factor is forgotten."""

    def __call__(self, a):
        out = torch.log(1 + a.exp())

        def _backward():
            a.g = out.g / (1 + a.exp())

        self._backward, self.out = _backward, out
        return out


class Sigmoid(Op):
    def __call__(self, a):
        out = 1 / (1 + (-a).exp())

        def _backward():
            a.g = out * (1 - out) * out.g

        self._backward, self.out = _backward, out
        return out


class SigmoidOfOutput(Op):
    """BUG: applies sigmoid' to the output, s(s)(1 - s(s)), instead of s(1 - s)."""

    def __call__(self, a):
        out = 1 / (1 + (-a).exp())

        def _backward():
            s = torch.sigmoid(out)
            a.g = s * (1 - s) * out.g

        self._backward, self.out = _backward, out
        return out


class SqrtAbs(Op):
    def __call__(self, a):
        out = a.abs().sqrt()

        def _backward():
            a.g = a.sign() / (2 * out) * out.g

        self._backward, self.out = _backward, out
        return out


class SqrtAbsForgotAbs(Op):
    """BUG: the backward forgets the abs: NaN wherever a < 0."""

    def __call__(self, a):
        out = a.abs().sqrt()

        def _backward():
            a.g = out.g / (2 * a.sqrt())

        self._backward, self.out = _backward, out
        return out
