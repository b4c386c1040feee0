"""Layers in the style of the fast.ai lesson's first classes.

``__call__`` keeps ``self.inp`` and ``self.out``; ``backward()`` takes no argument and reads
``self.out.g``. Weights are plain float32 tensors handed to the constructor: ``Lin(w, b)``.
"""

import torch


class Relu:
    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.inp.g = (self.inp > 0).float() * self.out.g


class ReluGe:
    """Correct: ``>=`` instead of ``>`` only differs at exactly 0."""

    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.inp.g = (self.inp >= 0).float() * self.out.g


class ReluNewTensor:
    """Correct: the in-place masking happens on a new tensor."""

    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        g = self.out.g.clone()
        g[self.inp <= 0] = 0
        self.inp.g = g


class ReluWrongMask:
    """BUG: the mask is the wrong way round."""

    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.inp.g = (self.inp < 0).float() * self.out.g


class ReluInplaceOutG:
    """BUG: zeroes out.g in place, then hands it on as the input's gradient."""

    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.out.g[self.inp <= 0] = 0
        self.inp.g = self.out.g


class Lin:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, inp):
        self.inp = inp
        self.out = inp @ self.w + self.b
        return self.out

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = self.inp.t() @ self.out.g
        self.b.g = self.out.g.sum(0)


class LinKeepsInit(Lin):
    """Correct: keeps a copy of its initial weight that the forward never uses."""

    def __init__(self, w, b):
        super().__init__(w, b)
        self.w_init = w.clone()


class LinTransposedW(Lin):
    """BUG: dW transposed (square weights, so the shape is right)."""

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = self.out.g.t() @ self.inp
        self.b.g = self.out.g.sum(0)


class LinBiasMean(Lin):
    """BUG: bias gradient averaged over the batch instead of summed."""

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = self.inp.t() @ self.out.g
        self.b.g = self.out.g.mean(0)


class LinNoBiasGrad(Lin):
    """BUG: forgets b.g."""

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = self.inp.t() @ self.out.g


class LinSingleExample(Lin):
    """BUG: dW derived for one example (right only for a batch of 1)."""

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = torch.outer(self.inp[0], self.out.g[0])
        self.b.g = self.out.g.sum(0)


class SquaredError:
    """Mean squared error of the first column against a float target; like the lesson's Mse
    its backward ignores out.g (right when the loss is the end of the graph)."""

    def __call__(self, inp, targ):
        self.inp, self.targ = inp, targ
        self.out = ((inp[:, 0] - targ) ** 2).mean()
        return self.out

    def backward(self):
        n = self.targ.shape[0]
        g = torch.zeros_like(self.inp)
        g[:, 0] = 2 * (self.inp[:, 0] - self.targ) / n
        self.inp.g = g


class SquaredErrorNoMean(SquaredError):
    """BUG: forgets the 1/N of the mean."""

    def backward(self):
        g = torch.zeros_like(self.inp)
        g[:, 0] = 2 * (self.inp[:, 0] - self.targ)
        self.inp.g = g


class MLP:
    """A plain object holding a list of layers."""

    lin = Lin

    def __init__(self, w1, b1, w2, b2):
        self.layers = [self.lin(w1, b1), Relu(), Lin(w2, b2)]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        self.out = x
        return x

    def backward(self):
        for layer in reversed(self.layers):
            layer.backward()


class MLPTransposed(MLP):
    """BUG: its first layer has the transposed dW."""

    lin = LinTransposedW
