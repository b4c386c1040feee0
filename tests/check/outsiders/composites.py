"""Composite models as plain objects, built from the lesson-style layers next to this file."""

import lesson_early as early
import lesson_module as lm


class Model:
    """The lesson's shape of model: layers in a list, a loss at the end; the loss's backward
    ignores out.g, so the whole model's does."""

    first = early.Lin

    def __init__(self, w1, b1, w2, b2):
        self.layers = [self.first(w1, b1), early.Relu(), early.Lin(w2, b2)]
        self.loss = early.SquaredError()

    def __call__(self, x, targ):
        for layer in self.layers:
            x = layer(x)
        self.out = self.loss(x, targ)
        return self.out

    def backward(self):
        self.loss.backward()
        for layer in reversed(self.layers):
            layer.backward()


class ModelTransposed(Model):
    """BUG: its first layer's dW is transposed (square w1)."""

    first = early.LinTransposedW


class Residual:
    """``x + relu(lin(x))``: x feeds both the branch and the skip path."""

    relu = early.Relu

    def __init__(self, w, b):
        self.lin = early.Lin(w, b)
        self.act = self.relu()

    def __call__(self, x):
        self.x = x
        self.out = x + self.act(self.lin(x))
        return self.out

    def backward(self):
        self.act.out.g = self.out.g
        self.act.backward()
        self.lin.backward()  # sets x.g from the branch
        self.x.g = self.x.g + self._skip()

    def _skip(self):
        return self.out.g


class ResidualNoSkip(Residual):
    """BUG: the skip path's gradient is forgotten."""

    def _skip(self):
        return 0


class ResidualInplaceRelu(Residual):
    """BUG: its ReLU zeroes the shared out.g in place, corrupting the skip path."""

    relu = early.ReluInplaceOutG


class TiedTwice:
    """BUG: the lesson's Lin used twice; its one self.args/self.out is overwritten by the
    second call, so both backward calls go through the second call."""

    def __init__(self, w, b):
        self.lin = lm.Lin(w, b)
        self.act = lm.Tanh()

    def __call__(self, x):
        self.out = self.lin(self.act(self.lin(x)))
        return self.out

    def backward(self):
        self.lin.backward()
        self.act.backward()
        self.lin.backward()


class Tied:
    """The same (square) weight used twice, bookkeeping written out by hand."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        self.x = x
        self.a = (x @ self.w + self.b).tanh()
        self.out = self.a @ self.w + self.b
        return self.out

    def backward(self):
        g = self.out.g
        w_g, self.b.g = self.a.t() @ g, g.sum(0)
        dh = (g @ self.w.t()) * (1 - self.a**2)
        self.w.g = self._add(w_g, self.x.t() @ dh)
        self.b.g = self.b.g + dh.sum(0)
        self.x.g = dh @ self.w.t()

    def _add(self, second_use, first_use):
        return second_use + first_use


class TiedOverwrites(Tied):
    """BUG: the first use's dW overwrites the second's instead of adding to it."""

    def _add(self, second_use, first_use):
        return first_use
