"""The JAX peer: the same networks, losses and optimizers written as a JAX user writes them,
pure functions differentiated by ``jax.grad`` and compiled by XLA, in two forms:

- ``JAX jit step``: one ``jax.jit``-compiled training step (forward, backward, update; the
  parameters and optimizer state donated, so XLA updates them in place) called per batch;
- ``JAX lax.scan epoch``: the whole epoch as one compiled ``lax.scan`` over the batches (the
  last, shorter batch, if any, by the jit step after it).

W1 is one ``jax.jit(jax.value_and_grad(loss))`` call. The cnn (W4) uses ``lax.conv`` in NHWC,
XLA's preferred layout on the CPU (the weights are laid out HWIO once, before timing).
Every update follows ``torch.optim`` (SGD without momentum, Adam and AdamW with PyTorch's
defaults and its bias-corrected form). JAX is imported here, and this module only when the
peer is asked for (``pip install 'handgrad[peers]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handgrad.app.bench.jobs import Job
from handgrad.app.bench.peers.spec import PeerSpec
from handgrad.nn.layers import BatchNorm2d, BatchNormReLU2d, Conv2d, Dropout, Linear

VARIANTS = ("JAX jit step", "JAX lax.scan epoch")
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 0.01  # torch.optim's defaults; AdamW's decay


def status() -> tuple[bool, str]:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False, "JAX is not installed: pip install 'handgrad[peers]'"
    return True, ""


def prepare(threads: int | None) -> str | None:
    """A note where ``--threads`` cannot reach JAX: XLA's CPU client runs its own thread pool
    over every core (checked with JAX 0.10.2: ``--xla_cpu_multi_thread_eigen=false`` in
    ``XLA_FLAGS`` still leaves several threads busy), so JAX's column keeps every core."""
    cores = os.cpu_count() or 1
    if threads is not None and threads != cores:
        return f"JAX: --threads {threads} does not reach XLA's thread pool (all {cores} cores)"
    return None


def subnormals() -> str:
    """How JAX treats subnormal floats here, checked."""
    how = "flushed (XLA's CPU default; checked here)" if xla_flushes() else "kept (checked here)"
    return f"subnormals in JAX: {how}"


def xla_flushes() -> bool:
    """Whether XLA's compiled CPU code flushes float32 subnormals to zero (it sets FTZ/DAZ
    in its threads): half the smallest normal float32, computed by a jitted function."""
    import jax
    import jax.numpy as jnp

    half = jax.jit(lambda v: v * 0.5)(jnp.full((4096,), 2.0**-126, dtype=jnp.float32))
    return bool((np.asarray(half) == 0).all())


def variants(spec: PeerSpec) -> list[tuple[str, Callable[[], Job]]]:
    """The labels and job factories for ``spec``'s workload (W1: one jitted gradient pass)."""
    if spec.kind == "grad":
        return [(VARIANTS[0], lambda: JaxGrad(spec))]
    step, scan = VARIANTS
    return [
        (step, lambda: JaxTrain(spec, scan=False)),
        (scan, lambda: JaxTrain(spec, scan=True)),
    ]


def _jnp(t: Tensor) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(t.detach().cpu().numpy())


def _torch(a: Any) -> Tensor:
    return torch.from_numpy(np.array(a))


# ------------------------------------------------------------------------------- the math
def mlp(params: list[tuple[Any, Any]], x: Any) -> Any:
    """``Linear -> ReLU -> ... -> Linear``; weights (in, out) as handgrad's: (N, out)."""
    import jax.numpy as jnp

    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = jnp.maximum(x, 0.0)
    return x


def cnn(params: dict[str, Any], stats: dict[str, Any], x: Any, arch: dict[str, Any], key: Any):
    """The ``cnn`` recipe in training mode, NHWC: each block ``conv -> batch norm (batch
    statistics) -> ReLU``, then global average pool, dropout and the linear head. Returns the
    logits (N, classes) and the blocks' updated running statistics."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    side = arch["side"]
    h = x.reshape(x.shape[0], side, side, 1)  # (N, H, W, 1)
    new_stats = {}
    for i, stride in enumerate(arch["strides"]):
        h = lax.conv_general_dilated(
            h, params[f"conv{i}"], (stride, stride), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        mean = h.mean((0, 1, 2))  # (C,)
        var = h.var((0, 1, 2))  # biased, as batch norm normalises with
        n = h.shape[0] * h.shape[1] * h.shape[2]
        m = arch["momentum"]
        new_stats[f"mean{i}"] = (1 - m) * stats[f"mean{i}"] + m * mean
        new_stats[f"var{i}"] = (1 - m) * stats[f"var{i}"] + m * var * n / (n - 1)
        h = (h - mean) * lax.rsqrt(var + arch["eps"]) * params[f"gamma{i}"] + params[f"beta{i}"]
        h = jnp.maximum(h, 0.0)
    h = h.mean((1, 2))  # (N, C)
    p = arch["dropout"]
    if p > 0:
        keep = jax.random.bernoulli(key, 1.0 - p, h.shape)
        h = jnp.where(keep, h / (1.0 - p), 0.0)
    return h @ params["head_w"] + params["head_b"], new_stats


def cross_entropy(logits: Any, y: Any, smoothing: float) -> Any:
    """PyTorch's ``cross_entropy`` with ``label_smoothing``: the mean over rows of
    ``-sum_c ((1 - s) onehot_c + s / C) log_softmax_c``."""
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits)  # (N, C)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]  # (N,)
    if smoothing:
        nll = (1 - smoothing) * nll - smoothing * logp.mean(1)
    return nll.mean()


def update(opt: str, lr: float, params: Any, grads: Any, state: dict[str, Any]) -> tuple:
    """One step of ``torch.optim``'s SGD (no momentum), Adam or AdamW on a pytree:
    Adam: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; AdamW decays ``p`` by
    ``(1 - lr wd)`` first."""
    import jax
    import jax.numpy as jnp

    tree = jax.tree_util.tree_map
    if opt == "sgd":
        return tree(lambda p, g: p - lr * g, params, grads), state
    b1, b2 = BETAS
    t = state["t"] + 1
    m = tree(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = tree(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    step = lr / (1 - b1**t)
    root_bc2 = jnp.sqrt(1 - b2**t)
    decay = 1 - lr * WEIGHT_DECAY if opt == "adamw" else 1.0
    params = tree(
        lambda p, m, v: p * decay - step * m / (jnp.sqrt(v) / root_bc2 + EPS), params, m, v
    )
    return params, {"t": t, "m": m, "v": v}


# ------------------------------------------------------------------------------- the jobs
class JaxGrad:
    """W1: ``jax.jit(jax.value_and_grad(mse))`` on the whole batch, the input's gradient too
    when asked."""

    def __init__(self, spec: PeerSpec) -> None:
        import jax

        assert spec.init is not None
        self.spec = spec
        self.params = [(_jnp(w), _jnp(b)) for w, b in spec.init]
        self.x, self.y = _jnp(spec.x), _jnp(spec.y)

        def mse(params: Any, x: Any, y: Any) -> Any:
            return ((mlp(params, x)[:, 0] - y) ** 2).mean()

        argnums = (0, 1) if spec.input_grad else 0
        self.grad = jax.jit(jax.value_and_grad(mse, argnums=argnums))

    def run(self) -> tuple[Any, Any]:
        out = self.grad(self.params, self.x, self.y)
        return jax_ready(out)

    def probe(self) -> dict[str, Tensor]:
        loss, grads = self.run()
        dx = None
        if self.spec.input_grad:
            grads, dx = grads
        flat = [t for wb in grads for t in wb]
        out = {f"grad:{n}": _torch(g) for n, g in zip(self.spec.names, flat, strict=True)}
        out["loss"] = _torch(loss)
        return out | ({"input grad": _torch(dx)} if dx is not None else {})


def jax_ready(tree: Any) -> Any:
    """Wait for JAX's asynchronous dispatch: a timed run ends when its results exist."""
    import jax

    return jax.block_until_ready(tree)


class JaxTrain:
    """An epoch of W2-W4: per batch a jitted step, or the epoch as one ``lax.scan``."""

    def __init__(self, spec: PeerSpec, *, scan: bool) -> None:
        import jax
        import jax.numpy as jnp

        self.spec, self.scan = spec, scan
        self.params, self.stats, self.arch = _initial(spec)

        def zeros() -> Any:  # one buffer each: the step donates (updates in place) all of them
            return jax.tree_util.tree_map(jnp.zeros_like, self.params)

        self.state: dict[str, Any] = {"t": jnp.zeros((), jnp.int32), "m": zeros(), "v": zeros()}
        self.key = jax.random.PRNGKey(0)
        bs = spec.batches.batch_size
        x, y = spec.x, spec.y
        full = len(x) // bs
        self.batches = [(_jnp(xb), _jnp(yb)) for xb, yb in spec.batches]
        self.stacked = (  # (steps, bs, 784), (steps, bs): the full batches, for lax.scan
            _jnp(x[: full * bs].reshape(full, bs, x.shape[1])),
            _jnp(y[: full * bs].reshape(full, bs)),
        )
        self.rest = self.batches[full:]  # the shorter last batch, if any
        self._compile()

    def _compile(self) -> None:
        import jax
        from jax import lax

        spec, arch = self.spec, self.arch

        def loss_fn(params: Any, stats: Any, xb: Any, yb: Any, key: Any) -> tuple:
            if spec.kind == "cnn":
                logits, stats = cnn(params, stats, xb, arch, key)
            else:
                logits = mlp(params, xb)
            return cross_entropy(logits, yb, spec.smoothing), stats

        def step(carry: tuple, batch: tuple) -> tuple:
            params, stats, state, key = carry
            key, sub = jax.random.split(key)
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, stats, *batch, sub
            )
            params, state = update(spec.opt, spec.lr, params, grads, state)
            return (params, stats, state, key), loss

        self.step = jax.jit(step, donate_argnums=0)
        self.epoch = jax.jit(lambda carry, xs: lax.scan(step, carry, xs), donate_argnums=0)

    def run(self) -> None:
        carry = (self.params, self.stats, self.state, self.key)
        if self.scan:
            if len(self.stacked[0]):
                carry, _ = self.epoch(carry, self.stacked)
            for batch in self.rest:
                carry, _ = self.step(carry, batch)
        else:
            for batch in self.batches:
                carry, _ = self.step(carry, batch)
        self.params, self.stats, self.state, self.key = jax_ready(carry)

    def probe(self) -> dict[str, Tensor]:
        """One step on the first batch, dropout off: the loss and the updated parameters."""
        self.arch["dropout"] = 0.0
        self._compile()
        carry = (self.params, self.stats, self.state, self.key)
        if self.scan and len(self.stacked[0]):  # the scan over one batch: what is timed
            first = tuple(a[:1] for a in self.stacked)
            carry, losses = self.epoch(carry, first)
            loss = losses[0]
        else:
            carry, loss = self.step(carry, self.batches[0])
        self.params = jax_ready(carry)[0]
        return {"loss": _torch(loss)} | _named_params(self.spec, self.params)


def _initial(spec: PeerSpec) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The bench's initial weights as JAX arrays: an MLP's ``[(w, b), ...]``, or the cnn's
    parameters by block (convolutions HWIO), its running statistics and its architecture."""
    if spec.kind != "cnn":
        assert spec.init is not None
        return [(_jnp(w), _jnp(b)) for w, b in spec.init], {}, {}
    assert spec.model is not None
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    arch: dict[str, Any] = {"strides": [], "dropout": 0.0, "side": 28}
    convs = bns = 0
    for m in spec.model.modules():
        if isinstance(m, Conv2d):
            stride = m.geometry.stride
            if m.geometry.padding != (1, 1) or stride[0] != stride[1] or m.bias is not None:
                raise ValueError("the JAX peer writes the cnn recipe's 3x3 blocks only")
            params[f"conv{convs}"] = _jnp(m.weight.permute(2, 3, 1, 0))  # OIHW -> HWIO
            arch["strides"].append(stride[0])
            convs += 1
        elif isinstance(m, BatchNorm2d | BatchNormReLU2d):
            params[f"gamma{bns}"], params[f"beta{bns}"] = _jnp(m.weight), _jnp(m.bias)
            stats[f"mean{bns}"], stats[f"var{bns}"] = _jnp(m.running_mean), _jnp(m.running_var)
            arch["eps"], arch["momentum"] = m.eps, m.momentum
            bns += 1
        elif isinstance(m, Dropout):
            arch["dropout"] = m.p
        elif isinstance(m, Linear):
            params["head_w"], params["head_b"] = _jnp(m.weight), _jnp(m.bias)
    return params, stats, arch


def _named_params(spec: PeerSpec, params: Any) -> dict[str, Tensor]:
    """Parameters by handgrad's names and layout (the guard compares them)."""
    if spec.kind != "cnn":
        flat = [t for wb in params for t in wb]
    else:
        blocks = len([k for k in params if k.startswith("conv")])
        flat = []
        for i in range(blocks):
            conv = np.transpose(np.array(params[f"conv{i}"]), (3, 2, 0, 1))  # HWIO -> OIHW
            flat += [conv, params[f"gamma{i}"], params[f"beta{i}"]]
        flat += [params["head_w"], params["head_b"]]
    return {f"param:{n}": _torch(t) for n, t in zip(spec.names, flat, strict=True)}
