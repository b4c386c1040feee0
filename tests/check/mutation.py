"""Mutation testing of the gradient checker: correct layers, and wrong copies of them.

``BASES`` are correct layers written as SOURCE TEXT, each a file a user could write:

- ``call.*``: the lesson's early classes (``__call__`` keeps ``self.inp``/``self.out``,
  ``backward()`` sets ``.g``; plain-tensor weights, ``Lin(w, b)``);
- ``module.*``: classes on the lesson's own plain ``Module`` base (``forward`` and
  ``bwd(out, *args)``; the base is written out in each file, no handgrad import);
- ``hg.*``: ``handgrad.Module`` subclasses re-implementing the built-ins' backward by copying
  (or, ``hg.LinearCall``, by calling) ``handgrad.nn.functional``'s math, plus a residual block that
  uses its input twice, a weight used twice and a sub-module called twice.

``OPERATORS`` rewrite the backward methods (``bwd``/``backward``) of a layer with ``ast``:
every place in a backward where an operator's pattern matches gives one mutant, so the
catalogue (``MUTANTS``) is generated, never written by hand. Each mutant knows whether it is
*equivalent* (the same gradients as the original where the checker looks: ``x > 0`` vs
``x >= 0`` on a continuous input; a loss that ignores ``out.g``) and which checked tensors
its change can reach (``expected``: a dependency walk through the backward's statements, from
the mutated statement to the ``.g`` assignments it feeds; ``None`` where not well defined).

Used by tests/test_gradcheck_mutants.py and benchmarks/bench_gradcheck.py.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# ------------------------------------------------------------------------------------ bases

_LESSON_BASE = '''
import torch


class Module:
    """The lesson's own base class: one saved call, backward through bwd."""

    def __call__(self, *args):
        self.args = args
        self.out = self.forward(*args)
        return self.out

    def forward(self):
        raise Exception("not implemented")

    def backward(self):
        self.bwd(self.out, *self.args)
'''

_HG_HEADER = """
import torch

from handgrad import Module, Parameter


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
"""

_CALL_LIN = """
import torch


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
"""

_CALL_LIN_BROADCAST = '''
import torch


class Lin:
    """The lesson's first version: dW by broadcasting, then a sum over the batch."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, inp):
        self.inp = inp
        self.out = inp @ self.w + self.b
        return self.out

    def backward(self):
        self.inp.g = self.out.g @ self.w.t()
        self.w.g = (self.inp.unsqueeze(-1) * self.out.g.unsqueeze(1)).sum(0)
        self.b.g = self.out.g.sum(0)
'''

_CALL_RELU = """
import torch


class Relu:
    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.inp.g = (self.inp > 0).float() * self.out.g
"""

_CALL_MSE = """
import torch


class Mse:
    def __call__(self, inp, targ):
        self.inp, self.targ = inp, targ
        self.out = (inp.squeeze(-1) - targ).pow(2).mean()
        return self.out

    def backward(self):
        self.inp.g = 2.0 * (self.inp.squeeze(-1) - self.targ).unsqueeze(-1) / self.targ.shape[0]
"""

_MODULE_LIN = """

class Lin(Module):
    def __init__(self, w, b):
        self.w, self.b = w, b

    def forward(self, inp):
        return inp @ self.w + self.b

    def bwd(self, out, inp):
        inp.g = out.g @ self.w.t()
        self.w.g = inp.t() @ out.g
        self.b.g = out.g.sum(0)
"""

_MODULE_RELU = """

class Relu(Module):
    def forward(self, inp):
        return inp.clamp_min(0.0)

    def bwd(self, out, inp):
        inp.g = (inp > 0).float() * out.g
"""

_MODULE_MSE = """

class Mse(Module):
    def forward(self, inp, targ):
        return (inp.squeeze(-1) - targ).pow(2).mean()

    def bwd(self, out, inp, targ):
        inp.g = 2.0 * (inp.squeeze(-1) - targ).unsqueeze(-1) / targ.shape[0]
"""

_MODULE_TIED = '''

class Tied(Module):
    """One weight used twice: out = (inp @ w) @ w; w.g adds both uses."""

    def __init__(self, w):
        self.w = w

    def forward(self, inp):
        return inp @ self.w @ self.w

    def bwd(self, out, inp):
        h = inp @ self.w
        hg = out.g @ self.w.t()
        self.w.g = h.t() @ out.g + inp.t() @ hg
        inp.g = hg @ self.w.t()
'''

_HG_LINEAR = """

class Linear(Module):
    def __init__(self, n_in, n_out, seed=0):
        self.weight = Parameter(randn(seed, n_in, n_out) / n_in**0.5)
        self.bias = Parameter(randn(seed + 1, n_out))

    def forward(self, x):
        return x @ self.weight + self.bias

    def bwd(self, out, x):
        x.g = out.g @ self.weight.t()
        self.weight.g = x.t() @ out.g
        self.bias.g = out.g.sum(0)
"""

_HG_LINEAR_CALL = """
from handgrad.nn.functional import linear_backward, linear_forward


class LinearCall(Module):
    def __init__(self, n_in, n_out, seed=0):
        self.weight = Parameter(randn(seed, n_in, n_out) / n_in**0.5)
        self.bias = Parameter(randn(seed + 1, n_out))

    def forward(self, x):
        return linear_forward(x, self.weight, self.bias)

    def bwd(self, out, x):
        dx, dw, db = linear_backward(out.g, x, self.weight)
        x.g = dx
        self.weight.g = dw
        self.bias.g = db
"""

_HG_RELU = """

class ReLU(Module):
    def forward(self, x):
        return x.clamp_min(0.0)

    def bwd(self, out, x):
        x.g = out.g * (x > 0)
"""

_HG_RELU_OUT = '''

class ReLUOut(Module):
    """The mask read from the output, as the built-in does: out > 0 exactly where x > 0."""

    def forward(self, x):
        return x.clamp_min(0.0)

    def bwd(self, out, x):
        x.g = out.g * (out > 0)
'''

_HG_LEAKY = """

class LeakyReLU(Module):
    def __init__(self, slope=0.01):
        self.slope = slope

    def forward(self, x):
        return torch.where(x > 0, x, x * self.slope)

    def bwd(self, out, x):
        x.g = torch.where(x > 0, out.g, out.g * self.slope)
"""

_HG_TANH = """

class Tanh(Module):
    def forward(self, x):
        return torch.tanh(x)

    def bwd(self, out, x):
        x.g = out.g * (1 - out * out)
"""

_HG_SIGMOID = """

class Sigmoid(Module):
    def forward(self, x):
        return 1 / (1 + torch.exp(-x))

    def bwd(self, out, x):
        x.g = out.g * (out * (1 - out))
"""

_HG_SOFTMAX = """

class Softmax(Module):
    def forward(self, x):
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    def bwd(self, out, x):
        x.g = out * (out.g - (out.g * out).sum(-1, keepdim=True))
"""

_HG_LAYERNORM = """

class LayerNorm(Module):
    def __init__(self, n, seed=0, eps=1e-5):
        self.gamma = Parameter(1 + 0.5 * randn(seed, n))
        self.beta = Parameter(0.5 * randn(seed + 1, n))
        self.eps = eps

    def forward(self, x):
        var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
        return (x - mean) / (var + self.eps).sqrt() * self.gamma + self.beta

    def bwd(self, out, x):
        n = x.shape[-1]
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        inv_std = (var + self.eps).rsqrt()
        xhat = (x - mean) * inv_std
        self.gamma.g = (out.g * xhat).sum(0)
        self.beta.g = out.g.sum(0)
        dxhat = out.g * self.gamma
        sum_dxhat = dxhat.sum(-1, keepdim=True)
        sum_dxhat_xhat = (dxhat * xhat).sum(-1, keepdim=True)
        x.g = inv_std / n * (n * dxhat - sum_dxhat - xhat * sum_dxhat_xhat)
"""

_HG_BATCHNORM = """

class BatchNorm1d(Module):
    def __init__(self, n, seed=0, eps=1e-5, momentum=0.1):
        self.weight = Parameter(1 + 0.5 * randn(seed, n))
        self.bias = Parameter(0.5 * randn(seed + 1, n))
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        var, mean = torch.var_mean(x, 0, correction=0)
        m = x.shape[0]
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * m / (m - 1), self.momentum)
        return (x - mean) / (var + self.eps).sqrt() * self.weight + self.bias

    def bwd(self, out, x):
        m = x.shape[0]
        var, mean = torch.var_mean(x, 0, correction=0)
        inv_std = (var + self.eps).rsqrt()
        xhat = (x - mean) * inv_std
        self.weight.g = (out.g * xhat).sum(0)
        self.bias.g = out.g.sum(0)
        dxhat = out.g * self.weight
        x.g = inv_std / m * (m * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0))
"""

_HG_MSE = """

class MSELoss(Module):
    def forward(self, inp, target):
        return ((inp - target) ** 2).mean()

    def bwd(self, out, inp, target):
        inp.g = 2 * (inp - target) / inp.numel() * out.g
"""

_HG_CROSS_ENTROPY = """

class CrossEntropyLoss(Module):
    def forward(self, logits, labels):
        logp = logits - logits.logsumexp(-1, keepdim=True)
        return -logp.gather(1, labels[:, None]).mean()

    def bwd(self, out, logits, labels):
        n = logits.shape[0]
        onehot = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)
        logits.g = (logits.softmax(-1) - onehot) / n * out.g
"""

_HG_CONV = """
import torch.nn.functional as F


class Conv2d(Module):
    def __init__(self, c_in, c_out, k, seed=0):
        self.k = k
        self.weight = Parameter(randn(seed, c_out, c_in, k, k) / (c_in * k * k) ** 0.5)
        self.bias = Parameter(randn(seed + 1, c_out))

    def forward(self, x):
        n, c, h, w = x.shape
        o = self.weight.shape[0]
        cols = F.unfold(x, self.k)
        y = self.weight.reshape(o, -1) @ cols + self.bias[:, None]
        return y.reshape(n, o, h - self.k + 1, w - self.k + 1)

    def bwd(self, out, x):
        n, c, h, w = x.shape
        o = self.weight.shape[0]
        cols = F.unfold(x, self.k)
        dy = out.g.reshape(n, o, -1)
        self.bias.g = dy.sum((0, 2))
        self.weight.g = (dy @ cols.transpose(1, 2)).sum(0).reshape(self.weight.shape)
        x.g = F.fold(self.weight.reshape(o, -1).t() @ dy, (h, w), self.k)
"""

_HG_RESIDUAL = '''

class Residual(Module):
    """out = x + tanh(x @ w): the input is used twice, so x.g has two terms."""

    def __init__(self, n, seed=0):
        self.weight = Parameter(randn(seed, n, n) / n**0.5)

    def forward(self, x):
        return x + torch.tanh(x @ self.weight)

    def bwd(self, out, x):
        t = torch.tanh(x @ self.weight)
        dh = out.g * (1 - t * t)
        self.weight.g = x.t() @ dh
        x.g = out.g + dh @ self.weight.t()
'''

_HG_TWICE = '''

class Dense(Module):
    def __init__(self, n_in, n_out, seed=0):
        self.weight = Parameter(randn(seed, n_in, n_out) / n_in**0.5)
        self.bias = Parameter(randn(seed + 1, n_out))

    def forward(self, x):
        return x @ self.weight + self.bias

    def bwd(self, out, x):
        x.g = out.g @ self.weight.t()
        self.weight.g = x.t() @ out.g
        self.bias.g = out.g.sum(0)


class Act(Module):
    def forward(self, x):
        return torch.tanh(x)

    def bwd(self, out, x):
        x.g = out.g * (1 - out * out)


class TwiceSeq(Module):
    """One Dense sub-module called twice: lin(act(lin(x)))."""

    def __init__(self, n, seed=0):
        self.lin = Dense(n, n, seed=seed)
        self.act = Act()

    def forward(self, x):
        return self.lin(self.act(self.lin(x)))

    def bwd(self, out, x):
        x.g = self.lin.backward(self.act.backward(self.lin.backward(out.g)))
'''


@dataclass(frozen=True)
class Base:
    """A correct layer: its file, the class to check, constructor arguments and inputs.

    ``args`` is the CLI's ``--args`` text (``{seed}`` is replaced by the check's seed, so the
    weights change with the seed too); the Python path evaluates the same text with its own
    generator. ``shapes`` are the CLI's ``--shape`` specs (``8,4`` float, ``8:10`` labels).
    """

    name: str
    cls: str
    source: str
    args: str = ""
    shapes: tuple[str, ...] = ()
    mutable: tuple[str, ...] = ()  # classes whose backward is mutated (default: cls)
    prefix: dict[str, str] = field(default_factory=dict)  # helper class -> dotted path
    loss: bool = False  # scalar output: dropping out.g is equivalent
    ignores_out_g: bool = False  # the original already ignores out.g (the lesson's Mse)
    zero_plateau: bool = False  # the output is exactly 0 on an interval (ReLU's output)
    skip: tuple[str, ...] = ()  # operators whose mutants would not have the gradient's shape

    @property
    def classes(self) -> tuple[str, ...]:
        return self.mutable or (self.cls,)

    @property
    def slug(self) -> str:
        return self.name.replace(".", "_")

    def cli_args(self, seed: int) -> str:
        return self.args.format(seed=seed)


_TRANSPOSES = ("swap_transposed", "drop_transpose", "row0_product")

BASES: tuple[Base, ...] = (
    # the lesson's early classes: __call__ / backward()
    Base("call.Lin", "Lin", _CALL_LIN, "randn(5, 5), randn(5)", ("7,5",)),
    Base(
        "call.LinBroadcast",
        "Lin",
        _CALL_LIN_BROADCAST,
        "randn(4, 3), randn(3)",
        ("6,4",),
        skip=_TRANSPOSES,
    ),
    Base("call.Relu", "Relu", _CALL_RELU, "", ("6,5",)),
    Base("call.Mse", "Mse", _CALL_MSE, "", ("6,1", "6"), loss=True, ignores_out_g=True),
    # the lesson's own Module base: forward / bwd(out, *args)
    Base("module.Lin", "Lin", _LESSON_BASE + _MODULE_LIN, "randn(5, 5), randn(5)", ("7,5",)),
    Base("module.Relu", "Relu", _LESSON_BASE + _MODULE_RELU, "", ("6,5",)),
    Base(
        "module.Mse",
        "Mse",
        _LESSON_BASE + _MODULE_MSE,
        "",
        ("6,1", "6"),
        loss=True,
        ignores_out_g=True,
    ),
    Base("module.Tied", "Tied", _LESSON_BASE + _MODULE_TIED, "randn(5, 5)", ("7,5",)),
    # handgrad.Module subclasses
    Base("hg.Linear", "Linear", _HG_HEADER + _HG_LINEAR, "5, 5, seed={seed}", ("7,5",)),
    Base(
        "hg.LinearRect",
        "Linear",
        _HG_HEADER + _HG_LINEAR,
        "4, 3, seed={seed}",
        ("6,4",),
        skip=_TRANSPOSES,
    ),
    Base(
        "hg.LinearCall", "LinearCall", _HG_HEADER + _HG_LINEAR_CALL, "4, 3, seed={seed}", ("6,4",)
    ),
    Base("hg.ReLU", "ReLU", _HG_HEADER + _HG_RELU, "", ("6,5",)),
    Base("hg.ReLUOut", "ReLUOut", _HG_HEADER + _HG_RELU_OUT, "", ("6,5",), zero_plateau=True),
    Base("hg.LeakyReLU", "LeakyReLU", _HG_HEADER + _HG_LEAKY, "0.1", ("6,5",)),
    Base("hg.Tanh", "Tanh", _HG_HEADER + _HG_TANH, "", ("6,5",)),
    Base("hg.Sigmoid", "Sigmoid", _HG_HEADER + _HG_SIGMOID, "", ("6,5",)),
    Base("hg.Softmax", "Softmax", _HG_HEADER + _HG_SOFTMAX, "", ("6,4",)),
    Base("hg.LayerNorm", "LayerNorm", _HG_HEADER + _HG_LAYERNORM, "5, seed={seed}", ("6,5",)),
    Base("hg.BatchNorm1d", "BatchNorm1d", _HG_HEADER + _HG_BATCHNORM, "4, seed={seed}", ("6,4",)),
    Base("hg.MSELoss", "MSELoss", _HG_HEADER + _HG_MSE, "", ("6,3", "6,3"), loss=True),
    Base(
        "hg.CrossEntropyLoss",
        "CrossEntropyLoss",
        _HG_HEADER + _HG_CROSS_ENTROPY,
        "",
        ("6,4", "6:4"),
        loss=True,
    ),
    Base(
        "hg.Conv2d",
        "Conv2d",
        _HG_HEADER + _HG_CONV,
        "2, 3, 2, seed={seed}",
        ("2,2,4,5",),
        skip=_TRANSPOSES,
    ),
    Base("hg.Residual", "Residual", _HG_HEADER + _HG_RESIDUAL, "5, seed={seed}", ("7,5",)),
    Base(
        "hg.TwiceSeq",
        "TwiceSeq",
        _HG_HEADER + _HG_TWICE,
        "5, seed={seed}",
        ("7,5",),
        mutable=("Dense", "TwiceSeq"),
        prefix={"Dense": "lin."},
    ),
)

BASE_BY_NAME = {b.name: b for b in BASES}

# --------------------------------------------------------------------------- AST helpers


def dotted(node: ast.AST) -> str | None:
    """``self.w.g`` for the expression ``self.w.g``; ``None`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _expr(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


def _transposed(node: ast.AST) -> ast.expr | None:
    """``A`` when ``node`` is ``A.t()`` or ``A.T``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "t"
        and not node.args
        and not node.keywords
    ):
        return node.func.value
    if isinstance(node, ast.Attribute) and node.attr == "T":
        return node.value
    return None


def _t(node: ast.expr) -> ast.expr:
    return ast.Call(ast.Attribute(node, "t", ast.Load()), [], [])


def _row0(node: ast.expr) -> ast.expr:
    return ast.Subscript(node, ast.Slice(None, ast.Constant(1)), ast.Load())


def _is_mask(node: ast.AST) -> bool:
    """A comparison, or a comparison cast to a number: ``x > 0``, ``(x > 0).float()``."""
    if isinstance(node, ast.Compare):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("float", "double", "to", "type_as")
        and isinstance(node.func.value, ast.Compare)
    )


def _sum_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sum"
    )


def _is_grad_assign(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Attribute)
        and node.targets[0].attr == "g"
    )


@dataclass
class Ctx:
    """Where an operator is looking: one backward method of one class of a base."""

    base: Base
    cls: str
    method: str
    out: str  # "out" (bwd) or "self.out" (the lesson's backward())
    inp: str  # the first input: "x", "inp" or "self.inp"
    args: tuple[str, ...]  # bwd's input arguments
    input_attrs: dict[str, str]  # lesson __call__: self.<attr> -> argument name
    helper: bool  # a sub-module's class, not the class the checker is given
    reused: frozenset[str] = frozenset()  # sub-modules whose backward is called twice here
    stmt: int = -1  # index of the top-level statement being visited
    first_grad: int = -1  # index of the first / last `.g` assignment statement
    last_grad: int = -1
    parents: list[ast.AST] = field(default_factory=list)

    def is_out_g(self, node: ast.AST) -> bool:
        return dotted(node) == f"{self.out}.g"

    def grad_target_is_param(self, node: ast.Assign) -> bool:
        path = dotted(node.targets[0].value)  # type: ignore[attr-defined]
        return (
            path is not None
            and path.startswith("self.")
            and path[5:] not in self.input_attrs
            and path != "self.out"
        )

    def grad_target_is_input(self, node: ast.Assign) -> bool:
        path = dotted(node.targets[0].value)  # type: ignore[attr-defined]
        return path in self.args or (
            path is not None and path.startswith("self.") and path[5:] in self.input_attrs
        )


# ------------------------------------------------------------------------------- operators


@dataclass(frozen=True)
class Operator:
    """A rewrite: ``match(node, ctx)`` finds a site, ``apply(node, ctx)`` returns its
    replacement (an expression, or for a statement a statement or a list of them)."""

    name: str
    group: str  # the wording, for the report
    match: Callable[[ast.AST, Ctx], bool]
    apply: Callable[[ast.AST, Ctx], Any]
    equivalent: Callable[[ast.AST, Ctx], bool] = lambda node, ctx: False
    hint: str | None = None  # a hint word the contract promises for this kind of failure


def _m_swap(n: ast.AST, c: Ctx) -> bool:
    return isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult) and bool(_transposed(n.left))


def _a_swap(n: ast.BinOp, c: Ctx) -> ast.expr:  # A.t() @ B  ->  B.t() @ A  (= (A.t() @ B).t())
    return ast.BinOp(_t(n.right), ast.MatMult(), _transposed(n.left))


def _m_drop_t(n: ast.AST, c: Ctx) -> bool:
    return isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult) and bool(_transposed(n.right))


def _a_drop_t(n: ast.BinOp, c: Ctx) -> ast.expr:  # A @ B.t()  ->  A @ B
    return ast.BinOp(n.left, ast.MatMult(), _transposed(n.right))


def _a_row0_product(n: ast.BinOp, c: Ctx) -> ast.expr:  # A.t() @ B -> A[:1].t() @ B[:1]
    return ast.BinOp(_t(_row0(_transposed(n.left))), ast.MatMult(), _row0(n.right))


def _m_drop_div(n: ast.AST, c: Ctx) -> bool:
    return (
        isinstance(n, ast.BinOp)
        and isinstance(n.op, ast.Div)
        and not isinstance(n.right, ast.Constant)
    )


def _m_extra_div(n: ast.AST, c: Ctx) -> bool:
    # averaging a parameter's gradient over the batch (or a loss's input gradient twice)
    return _is_grad_assign(n) and (
        c.grad_target_is_param(n) or (c.base.loss and c.grad_target_is_input(n))
    )


def _a_extra_div(n: ast.Assign, c: Ctx) -> ast.stmt:
    value = ast.BinOp(n.value, ast.Div(), _expr(f"{c.inp}.shape[0]"))
    return ast.Assign(n.targets, value)


def _a_sum_to_mean(n: ast.Call, c: Ctx) -> ast.expr:
    return ast.Call(ast.Attribute(n.func.value, "mean", ast.Load()), n.args, n.keywords)


def _m_drop_sum(n: ast.AST, c: Ctx) -> bool:
    # not the receiver of a further method call (`.sum(0).reshape(...)` would raise instead)
    return _sum_call(n) and not isinstance(c.parents[-1] if c.parents else None, ast.Attribute)


def _m_row0(n: ast.AST, c: Ctx) -> bool:
    return (
        _sum_call(n)
        and len(n.args) == 1
        and isinstance(n.args[0], ast.Constant)
        and n.args[0].value == 0
        and not n.keywords
    )


def _a_row0(n: ast.Call, c: Ctx) -> ast.expr:
    return ast.Subscript(n.func.value, ast.Constant(0), ast.Load())


def _a_negate(n: ast.Assign, c: Ctx) -> ast.stmt:
    return ast.Assign(n.targets, ast.UnaryOp(ast.USub(), n.value))


_FLIP = {ast.Gt: ast.Lt, ast.Lt: ast.Gt, ast.GtE: ast.LtE, ast.LtE: ast.GtE}


def _m_flip(n: ast.AST, c: Ctx) -> bool:
    return isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _FLIP


def _a_flip(n: ast.Compare, c: Ctx) -> ast.expr:
    return ast.Compare(n.left, [_FLIP[type(n.ops[0])]()], n.comparators)


def _is_where(n: ast.AST) -> bool:
    return (
        isinstance(n, ast.Call)
        and dotted(n.func) == "torch.where"
        and len(n.args) == 3
        and isinstance(n.args[0], ast.Compare)
    )


def _m_drop_mask(n: ast.AST, c: Ctx) -> bool:
    if _is_where(n):
        return True
    return (
        isinstance(n, ast.BinOp)
        and isinstance(n.op, ast.Mult)
        and (_is_mask(n.left) or _is_mask(n.right))
    )


def _a_drop_mask(n: ast.AST, c: Ctx) -> ast.expr:
    if _is_where(n):
        return n.args[1]  # type: ignore[attr-defined]
    return n.right if _is_mask(n.left) else n.left  # type: ignore[attr-defined]


_OR_EQUAL = {ast.Gt: ast.GtE, ast.Lt: ast.LtE}


def _m_or_equal(n: ast.AST, c: Ctx) -> bool:
    return (
        isinstance(n, ast.Compare)
        and len(n.ops) == 1
        and type(n.ops[0]) in _OR_EQUAL
        and isinstance(n.comparators[0], ast.Constant)
        and n.comparators[0].value == 0
    )


def _a_or_equal(n: ast.Compare, c: Ctx) -> ast.expr:
    return ast.Compare(n.left, [_OR_EQUAL[type(n.ops[0])]()], n.comparators)


def _eq_or_equal(n: ast.Compare, c: Ctx) -> bool:
    # `x >= 0` differs from `x > 0` only at x == 0, where random inputs never are; but a ReLU's
    # OUTPUT is exactly 0 for every negative input, so `out >= 0` keeps every element.
    return not (c.base.zero_plateau and dotted(n.left) == c.out)


def _m_unbiased(n: ast.AST, c: Ctx) -> bool:
    return isinstance(n, ast.keyword) and (
        (n.arg == "unbiased" and isinstance(n.value, ast.Constant) and n.value.value is False)
        or (n.arg == "correction" and isinstance(n.value, ast.Constant) and n.value.value == 0)
    )


def _a_unbiased(n: ast.keyword, c: Ctx) -> ast.keyword:
    return ast.keyword(n.arg, ast.Constant(True if n.arg == "unbiased" else 1))


_INPLACE = {ast.Mult: "mul_", ast.Add: "add_", ast.Sub: "sub_", ast.Div: "div_"}


def _m_inplace(n: ast.AST, c: Ctx) -> bool:
    if c.base.loss or not (isinstance(n, ast.Assign) and isinstance(n.value, ast.BinOp)):
        return False  # a loss's out.g is a scalar: it cannot take the gradient's shape
    v = n.value
    if type(v.op) not in _INPLACE:
        return False
    return c.is_out_g(v.left) or (isinstance(v.op, ast.Mult | ast.Add) and c.is_out_g(v.right))


def _a_inplace(n: ast.Assign, c: Ctx) -> list[ast.stmt]:
    """``t = out.g * m``  ->  ``out.g.mul_(m); t = out.g`` (the same value, out.g overwritten)."""
    v = n.value
    other = v.right if c.is_out_g(v.left) else v.left
    call = ast.Call(
        ast.Attribute(_expr(f"{c.out}.g"), _INPLACE[type(v.op)], ast.Load()), [other], []
    )
    return [ast.Expr(call), ast.Assign(n.targets, _expr(f"{c.out}.g"))]


def _poison(value: str) -> Callable[[ast.Assign, Ctx], ast.stmt]:
    def apply(n: ast.Assign, c: Ctx) -> ast.stmt:
        filled = ast.Call(
            ast.Attribute(
                ast.Call(ast.Attribute(n.value, "clone", ast.Load()), [], []),
                "index_fill_",
                ast.Load(),
            ),
            [ast.Constant(0), _expr("torch.tensor([0])"), _expr(f"float({value!r})")],
            [],
        )
        return ast.Assign(n.targets, filled)  # row 0 (or element 0) of the gradient

    return apply


def _m_drop_term(n: ast.AST, c: Ctx) -> bool:
    return _is_grad_assign(n) and isinstance(n.value, ast.BinOp) and isinstance(n.value.op, ast.Add)


def _m_drop_upstream(n: ast.AST, c: Ctx) -> bool:
    if not (isinstance(n, ast.Assign) and isinstance(n.value, ast.BinOp)):
        return False
    v = n.value
    if not isinstance(v.op, ast.Mult):
        return False
    if c.is_out_g(v.left):
        return not _is_mask(v.right)
    return c.is_out_g(v.right) and not _is_mask(v.left)


def _a_drop_upstream(n: ast.Assign, c: Ctx) -> ast.stmt:
    v = n.value
    return ast.Assign(n.targets, v.right if c.is_out_g(v.left) else v.left)


def _backward_call(n: ast.AST) -> bool:
    return (
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "backward"
        and len(n.args) == 1
    )


def _m_skip_reused(n: ast.AST, c: Ctx) -> bool:
    """A backward call of a sub-module that this backward calls more than once."""
    return _backward_call(n) and dotted(n.func.value) in c.reused  # type: ignore[attr-defined]


OPERATORS: tuple[Operator, ...] = (
    Operator("swap_transposed", "transposed product", _m_swap, _a_swap, hint="looks transposed"),
    Operator("drop_transpose", "transposed product", _m_drop_t, _a_drop_t),
    Operator("drop_div", "missing 1/N", _m_drop_div, lambda n, c: n.left),
    Operator("extra_div", "extra 1/N", _m_extra_div, _a_extra_div),
    Operator("sum_to_mean", "mean instead of sum", lambda n, c: _sum_call(n), _a_sum_to_mean),
    Operator("drop_sum", "not summed", _m_drop_sum, lambda n, c: n.func.value),
    Operator("negate", "wrong sign", lambda n, c: _is_grad_assign(n), _a_negate, hint="wrong sign"),
    Operator("flip_mask", "wrong mask", _m_flip, _a_flip),
    Operator("drop_mask", "missing mask", _m_drop_mask, _a_drop_mask),
    Operator("or_equal_mask", "> vs >= (equivalent off 0)", _m_or_equal, _a_or_equal, _eq_or_equal),
    Operator("unbiased_var", "variance over N-1", _m_unbiased, _a_unbiased),
    Operator("row0", "right only for batch 1", _m_row0, _a_row0),
    Operator("row0_product", "right only for batch 1", _m_swap, _a_row0_product),
    Operator(
        "inplace_out_g", "in-place write to out.g", _m_inplace, _a_inplace, hint="wrote into out.g"
    ),
    Operator(
        "nan_part",
        "NaN in part of a gradient",
        lambda n, c: _is_grad_assign(n) and c.stmt == c.first_grad,
        _poison("nan"),
        hint="non-finite",
    ),
    Operator(
        "inf_part",
        "Inf in part of a gradient",
        lambda n, c: _is_grad_assign(n) and c.stmt == c.last_grad,
        _poison("inf"),
        hint="non-finite",
    ),
    Operator(
        "drop_first_term",
        "reused input/weight: one use lost",
        _m_drop_term,
        lambda n, c: ast.Assign(n.targets, n.value.right),
    ),
    Operator(
        "drop_second_term",
        "reused input/weight: one use lost",
        _m_drop_term,
        lambda n, c: ast.Assign(n.targets, n.value.left),
    ),
    Operator(
        "skip_reused_call",
        "reused module: one use lost",
        _m_skip_reused,
        lambda n, c: n.args[0],
    ),
    Operator(
        "ignore_out_g",
        "out.g ignored (equiv. for a loss)",
        _m_drop_upstream,
        _a_drop_upstream,
        lambda n, c: c.base.loss,
    ),
)

OPERATOR_BY_NAME = {op.name: op for op in OPERATORS}

# ---------------------------------------------------------------------------- the rewriter


class _Rewriter(ast.NodeTransformer):
    """Counts an operator's sites in pre-order; replaces the ``target``-th (``-1``: none)."""

    def __init__(self, op: Operator, ctx: Ctx, target: int) -> None:
        self.op, self.ctx, self.target = op, ctx, target
        self.count = 0
        # (statement, equivalent, before, scaled)
        self.sites: list[tuple[int, bool, str, bool]] = []

    def visit(self, node: ast.AST) -> Any:
        if self.op.match(node, self.ctx):
            k = self.count
            self.count += 1
            self.sites.append(
                (
                    self.ctx.stmt,
                    self.op.equivalent(node, self.ctx),
                    _text(node),
                    _scales(self.ctx.parents, node),
                )
            )
            if k == self.target:
                return self.op.apply(node, self.ctx)
        self.ctx.parents.append(node)
        try:
            return self.generic_visit(node)
        finally:
            self.ctx.parents.pop()


def _scales(parents: list[ast.AST], node: ast.AST) -> bool:
    """Whether ``node`` is a ``.g`` assignment, or a factor of the gradient it assigns (reached
    from the assigned value through products, numerators and negations only): scaling it by a
    constant scales that gradient by the same constant."""
    if _is_grad_assign(node):
        return True
    if not parents or not _is_grad_assign(parents[0]):
        return False
    chain = [*parents[1:], node]
    if chain[0] is not parents[0].value:  # type: ignore[attr-defined]
        return False
    for above, below in itertools.pairwise(chain):
        if isinstance(above, ast.UnaryOp) and isinstance(above.op, ast.USub):
            continue
        if isinstance(above, ast.BinOp) and (
            isinstance(above.op, ast.Mult)
            or (isinstance(above.op, ast.Div) and below is above.left)
        ):
            continue
        return False
    return True


def _text(node: ast.AST) -> str:
    if isinstance(node, ast.keyword):
        return f"{node.arg}={ast.unparse(node.value)}"
    return ast.unparse(node)


def _methods(tree: ast.Module, cls: str) -> list[ast.FunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return [
                f
                for f in node.body
                if isinstance(f, ast.FunctionDef) and f.name in ("bwd", "backward")
            ]
    raise LookupError(f"no class {cls}")


def _input_attrs(tree: ast.Module, cls: str) -> dict[str, str]:
    """The lesson's ``__call__``: which ``self.<attr>`` keeps which argument."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "__call__":
                    argnames = {a.arg for a in f.args.args[1:]}
                    for stmt in ast.walk(f):
                        if isinstance(stmt, ast.Assign):
                            targets, values = stmt.targets[0], stmt.value
                            pairs = (
                                zip(targets.elts, values.elts, strict=False)
                                if isinstance(targets, ast.Tuple) and isinstance(values, ast.Tuple)
                                else [(targets, values)]
                            )
                            for t, v in pairs:
                                path = dotted(t)
                                if (
                                    path
                                    and path.startswith("self.")
                                    and isinstance(v, ast.Name)
                                    and v.id in argnames
                                ):
                                    found[path[5:]] = v.id
    return found


def _ctx(base: Base, tree: ast.Module, cls: str, fn: ast.FunctionDef) -> Ctx:
    if fn.name == "bwd":
        names = [a.arg for a in fn.args.args]
        out, args = names[1], tuple(names[2:])
        inp, attrs = args[0], {}
    else:
        out, args = "self.out", ()
        attrs = _input_attrs(tree, cls)
        inp = f"self.{next(iter(attrs))}"
    grads = [i for i, s in enumerate(fn.body) if _is_grad_assign(s)]
    calls = [dotted(n.func.value) for n in ast.walk(fn) if _backward_call(n)]
    return Ctx(
        base,
        cls,
        fn.name,
        out,
        inp,
        args,
        attrs,
        helper=cls != base.cls,
        first_grad=grads[0] if grads else -1,
        last_grad=grads[-1] if grads else -1,
        reused=frozenset(c for c in calls if c and calls.count(c) > 1),
    )


def _rewrite(
    base: Base, op: Operator, cls: str, method: str, target: int
) -> tuple[ast.Module, _Rewriter]:
    tree = ast.parse(base.source)
    for fn in _methods(tree, cls):
        if fn.name != method:
            continue
        rewriter = _Rewriter(op, _ctx(base, tree, cls, fn), target)
        body: list[ast.stmt] = []
        for i, stmt in enumerate(fn.body):
            rewriter.ctx.stmt = i
            new = rewriter.visit(stmt)
            body.extend(new if isinstance(new, list) else [new])
        fn.body = body
        return ast.fix_missing_locations(tree), rewriter
    raise LookupError(f"{cls}.{method}")


# ----------------------------------------------------------------------- expected failures


def _targets(stmt: ast.stmt) -> set[str]:
    """What a statement writes: assigned names, or the receiver of an in-place call."""
    out: set[str] = set()
    if isinstance(stmt, ast.Assign):
        for t in stmt.targets:
            for e in t.elts if isinstance(t, ast.Tuple) else [t]:
                if dotted(e):
                    out.add(dotted(e))  # type: ignore[arg-type]
    elif isinstance(stmt, ast.AugAssign) and dotted(stmt.target):
        out.add(dotted(stmt.target))  # type: ignore[arg-type]
    elif (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr.endswith("_")
        and dotted(stmt.value.func.value)
    ):
        out.add(dotted(stmt.value.func.value))  # type: ignore[arg-type]
    return out


def _reads(stmt: ast.stmt) -> set[str]:
    value = stmt.value if isinstance(stmt, ast.Assign | ast.Expr | ast.AugAssign) else stmt
    return {d for n in ast.walk(value) if (d := dotted(n))}


def _grad_name(target: str, ctx: Ctx) -> str | None:
    """The checker's name for the tensor whose gradient ``target`` (``....g``) sets; ``"*"``
    when it is a sub-module's input (it reaches everything upstream); ``None`` when it is no
    checked tensor (an intermediate's ``.g``)."""
    if not target.endswith(".g"):
        return None
    path = target[:-2]
    if ctx.helper:
        if path.startswith("self."):
            return ctx.base.prefix.get(ctx.cls, "") + path[5:]
        return "*"
    if path in ctx.args:
        return path
    if path.startswith("self."):
        attr = path[5:]
        return ctx.input_attrs.get(attr, attr)
    return None


def _expected(base: Base, cls: str, method: str, stmt_index: int) -> frozenset[str] | None:
    tree = ast.parse(base.source)
    fn = next(f for f in _methods(tree, cls) if f.name == method)
    ctx = _ctx(base, tree, cls, fn)
    tainted = set(_targets(fn.body[stmt_index]))
    for stmt in fn.body[stmt_index + 1 :]:
        reads = _reads(stmt)
        if any(r == t or r.startswith(t + ".") for r in reads for t in tainted):
            tainted |= _targets(stmt)
    names = {_grad_name(t, ctx) for t in tainted} - {None}
    if "*" in names:
        return None
    return frozenset(names)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- mutants


@dataclass(frozen=True)
class Mutant:
    base: Base
    op: Operator
    cls: str
    method: str
    site: int
    source: str
    equivalent: bool
    expected: frozenset[str] | None  # checked tensors the change can reach (None: any)
    before: str
    after: str
    scaled: bool  # the change multiplies one whole gradient by a constant

    @property
    def helper(self) -> bool:
        """The mutated class is a sub-module's (its gradients reach the layer's through it)."""
        return self.cls != self.base.cls

    @property
    def hint(self) -> str | None:
        """The hint words the contract promises for this mutant's failure, where one applies
        exactly: a NaN/Inf, a write into out.g, or one whole gradient transposed, negated or
        scaled by a constant."""
        if self.equivalent:
            return None
        if self.op.name in ("nan_part", "inf_part", "inplace_out_g"):
            return self.op.hint
        if self.helper or not self.scaled:
            return None
        if self.op.name in ("swap_transposed", "negate"):
            return self.op.hint
        if self.op.name in ("drop_div", "extra_div", "sum_to_mean"):
            return "off by a factor of"
        return None

    @property
    def name(self) -> str:
        return f"{self.base.name}/{self.op.name}/{self.cls}.{self.method}#{self.site}"

    @property
    def slug(self) -> str:
        return f"{self.base.slug}__{self.op.name}__{self.cls}_{self.method}_{self.site}"


def mutants_of(base: Base) -> list[Mutant]:
    found: list[Mutant] = []
    for cls in base.classes:
        for fn in _methods(ast.parse(base.source), cls):
            for op in OPERATORS:
                if op.name in base.skip:
                    continue
                _, counter = _rewrite(base, op, cls, fn.name, -1)
                for k, (stmt, equivalent, before, scaled) in enumerate(counter.sites):
                    tree, _ = _rewrite(base, op, cls, fn.name, k)
                    new_fn = next(f for f in _methods(tree, cls) if f.name == fn.name)
                    after = "; ".join(ast.unparse(s) for s in new_fn.body[stmt : stmt + 2])
                    found.append(
                        Mutant(
                            base,
                            op,
                            cls,
                            fn.name,
                            k,
                            ast.unparse(tree) + "\n",
                            equivalent,
                            None
                            if equivalent or op.name in ("inplace_out_g", "skip_reused_call")
                            else _expected(base, cls, fn.name, stmt),
                            before,
                            after,
                            scaled,
                        )
                    )
    return found


MUTANTS: tuple[Mutant, ...] = tuple(itertools.chain.from_iterable(mutants_of(b) for b in BASES))

# ------------------------------------------------------------------------- running checks


def write(directory: Path, slug: str, source: str) -> Path:
    path = directory / f"{slug}.py"
    path.write_text(source)
    return path


_loaded = itertools.count()


def load_class(path: Path, cls: str) -> type:
    """Import ``path`` as a user's file (a fresh module each time) and return ``cls``."""
    name = f"mutation_{path.stem}_{next(_loaded)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return getattr(module, cls)


_TENSOR_MAKERS = {
    "randn": torch.randn,
    "rand": torch.rand,
    "zeros": torch.zeros,
    "ones": torch.ones,
}


def _value(node: ast.expr, gen: torch.Generator) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        dims = [ast.literal_eval(a) for a in node.args]
        make = _TENSOR_MAKERS[node.func.id]
        if node.func.id in ("randn", "rand"):
            return make(*dims, generator=gen)
        return make(*dims)
    return ast.literal_eval(node)


def python_args(text: str, seed: int) -> tuple[list[Any], dict[str, Any]]:
    """The CLI's ``--args`` text evaluated for the Python path (float32 tensors, like the CLI)."""
    if not text.strip():
        return [], {}
    gen = torch.Generator().manual_seed(10_000 + seed)
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    return [_value(a, gen) for a in call.args], {
        k.arg: _value(k.value, gen) for k in call.keywords if k.arg
    }


def python_inputs(shapes: tuple[str, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs like the CLI's ``--shape`` specs: float32 normal values, or labels ``8:10``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in shapes:
        dims, _, classes = spec.partition(":")
        shape = tuple(int(d) for d in dims.split(","))
        if classes:
            out.append(torch.randint(0, int(classes), shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen))
    return tuple(out)


def build(path: Path, base: Base, seed: int) -> tuple[Any, tuple[torch.Tensor, ...]]:
    cls = load_class(path, base.cls)
    pos, kw = python_args(base.cli_args(seed), seed)
    return cls(*pos, **kw), python_inputs(base.shapes, seed)


def cli_argv(path: Path, base: Base, seed: int) -> list[str]:
    argv = ["check", f"{path}:{base.cls}"]
    if base.args:
        argv += ["--args", base.cli_args(seed)]
    for shape in base.shapes:
        argv += ["--shape", shape]
    return [*argv, "--seed", str(seed)]


@dataclass
class Verdict:
    ok: bool
    status: int | None
    names: frozenset[str]  # failing tensors (Python path) or names seen in stdout (CLI)
    summary: str
    notes: tuple[str, ...]
    seconds: float


def check_python(path: Path, base: Base, seed: int) -> Verdict:
    """``gradcheck`` on a fresh layer from ``path``; the verdict and its time (the check only)."""
    from handgrad.check import gradcheck

    layer, inputs = build(path, base, seed)
    start = time.perf_counter()
    report = gradcheck(layer, *inputs, seed=seed)
    seconds = time.perf_counter() - start
    return Verdict(
        report.ok,
        getattr(report, "status", None),
        frozenset(t.name for t in report.failures),
        report.summary(),
        tuple(getattr(report, "notes", ())),
        seconds,
    )


def check_cli(
    run_cli: Callable[..., Any],
    path: Path,
    base: Base,
    seed: int,
    names: frozenset[str] = frozenset(),
) -> Verdict:
    """``handgrad check FILE:Class ...`` in-process; ``names``: which of these appear in stdout
    as ``name:``."""
    start = time.perf_counter()
    result = run_cli(*cli_argv(path, base, seed))
    seconds = time.perf_counter() - start
    seen = frozenset(n for n in names if f"{n}:" in result.out)
    lines = [ln.strip() for ln in result.out.splitlines() if "FAIL" in ln] or [
        ln.strip() for ln in (result.out + result.err).splitlines() if ln.strip()
    ][-1:]
    return Verdict(result.status == 0, result.status, seen, lines[-1] if lines else "", (), seconds)


def mutant_caught(v: Verdict) -> bool:
    return not v.ok and v.status == 1


def names_right(m: Mutant, v: Verdict, *, cli: bool) -> bool:
    """The failing tensor named is one the mutation reaches (``expected``)."""
    if m.expected is None:
        return True
    if cli:
        return bool(v.names)  # names were filtered to `expected` when looking
    return bool(v.names) and v.names <= m.expected


def by_operator() -> dict[str, list[Mutant]]:
    out: dict[str, list[Mutant]] = {op.name: [] for op in OPERATORS}
    for m in MUTANTS:
        out[m.op.name].append(m)
    return out


__all__ = [
    "BASES",
    "BASE_BY_NAME",
    "MUTANTS",
    "OPERATORS",
    "OPERATOR_BY_NAME",
    "Base",
    "Mutant",
    "Operator",
    "Verdict",
    "build",
    "by_operator",
    "check_cli",
    "check_python",
    "cli_argv",
    "load_class",
    "mutant_caught",
    "names_right",
    "python_args",
    "python_inputs",
    "write",
]
