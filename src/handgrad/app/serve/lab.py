"""What the Draw page shows for one drawing: probabilities, every layer's activations and the
input gradient (saliency), all from the model's own hand-written forward and backward.

A trained model predicts in evaluation mode (batch norm uses its running statistics, dropout
is off), but handgrad's ``Module`` keeps a forward for the backward only in training mode. So
:func:`inference_graph` builds a copy whose layers compute the evaluation-mode function in
*any* mode: each batch norm, at any depth (inside a ``ResBlock`` too), becomes a
:class:`FrozenBatchNorm` (its running statistics as a per-channel scale and shift, with their
hand-written backward), and each ``Dropout`` the identity. The copy runs in training mode, so
``copy.backward(dL/dlogits)`` returns ``dL/dx`` through the same ``bwd`` methods that train the
model (no autograd; the tests check it against autograd and finite differences).

The saliency of class ``k`` is ``dL_k/dpixel`` with ``L_k`` the model's training loss against
label ``k`` (cross-entropy, or for the lesson's regression net the squared error to ``k``):
where it is negative, more ink would make the drawing more like ``k``. Pixels are normalised
``x = (p - mean) / std`` before the model, so ``dL/dp = dL/dx / std``.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handgrad.nn.layers import Dropout, GlobalAvgPool, Identity, ReLU
from handgrad.nn.layers.norm import _BatchNorm
from handgrad.nn.module import Module, Sequential
from handgrad.train.inference import Trained, predicted_classes
from handgrad.train.recipes import make_loss


class FrozenBatchNorm(Module):
    """A batch norm in evaluation mode as a layer of its own, for any mode: per channel ``c``,

        y = x * s_c + t_c,   s_c = gamma_c / sqrt(running_var_c + eps),
                             t_c = beta_c - running_mean_c * s_c

    (then ``max(y, 0)`` for a ``BatchNormReLU2d``; ``max(y + residual, 0)`` for a
    ``BatchNormAddReLU2d``, which takes the residual as a second input). Its statistics are
    constants, so ``dL/dx = dL/dy * s_c`` (times the mask ``y > 0`` after a ReLU, and the
    residual's gradient is that masked ``dL/dy``); it has no parameters.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        inv_std = (bn.running_var + bn.eps).rsqrt()  # (C,)
        scale = inv_std if bn.weight is None else bn.weight.detach() * inv_std
        beta = torch.zeros_like(scale) if bn.bias is None else bn.bias.detach()
        self.scale, self.shift = scale, beta - bn.running_mean * scale  # (C,), (C,)
        self.relu = bool(bn.relu)

    def _per_channel(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.ndim - 2)))  # (1, C, 1, 1) or (1, C)

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        y = x * self._per_channel(self.scale, x) + self._per_channel(self.shift, x)
        if residual:
            y = y + residual[0]
        return y.clamp_min(0) if self.relu else y

    def bwd(self, out: Tensor, x: Tensor, *residual: Tensor) -> None:
        g = out.g * (out > 0) if self.relu else out.g
        x.g = g * self._per_channel(self.scale, x)
        if residual:
            residual[0].g = g


def _frozen(m: Module) -> Module:
    if isinstance(m, _BatchNorm):
        return FrozenBatchNorm(m)
    return Identity() if isinstance(m, Dropout) else m


def inference_graph(model: Module) -> Sequential:
    """A copy of ``model`` (a ``Sequential``) that computes its evaluation-mode function in any
    mode, in training mode (so its backward can run): every batch norm, at any depth, frozen
    (:class:`FrozenBatchNorm`), every dropout the identity."""
    if not isinstance(model, Sequential):
        raise ValueError(f"cannot show the layers of a {type(model).__name__}: not a Sequential")
    graph = model.copy()
    for m in list(graph.modules()):
        for name, value in list(vars(m).items()):
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                setattr(m, name, _frozen(value))
            elif isinstance(value, list):
                value[:] = [_frozen(v) if isinstance(v, Module) else v for v in value]
    return graph.train()  # type: ignore[return-value]


def _shown(m: Module) -> bool:
    """A layer whose output a block ends with: a ReLU, a frozen batch norm + ReLU, a global
    pool, or a block of layers (a ResBlock)."""
    if isinstance(m, ReLU | GlobalAvgPool):
        return True
    return (isinstance(m, FrozenBatchNorm) and m.relu) or any(True for _ in m._children())


def shown_layers(graph: Sequential) -> list[int]:
    """Indices of the layers whose output the page shows: what each block computes (see
    :func:`_shown`), and the last layer (the outputs)."""
    last = len(graph.layers) - 1
    return [i for i, m in enumerate(graph.layers) if _shown(m) and i != last] + [last]


def encode(values: Tensor, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    """A tensor for the page: its shape, range and values as bytes ``round(255 (v - lo) / (hi -
    lo))`` in base64 (a layer of 12,544 values is 17 kB instead of ~200 kB of JSON numbers)."""
    v = values.detach().double().reshape(-1).nan_to_num()
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    span = hi - lo if hi > lo else 1.0
    q = ((v - lo) * (255.0 / span)).round_().clamp_(0, 255).to(torch.uint8)
    return {
        "shape": list(values.shape),
        "min": lo,
        "max": hi,
        "data": base64.b64encode(q.numpy().tobytes()).decode("ascii"),
    }


def describe_layer(m: Module, shape: tuple[int, ...], last: bool) -> str:
    """``relu 16@28x28``, ``resblock 32@14x14`` or ``outputs 10``: a layer's kind and size."""
    kind = "outputs" if last else type(m).__name__.lower()
    kind = "relu" if isinstance(m, FrozenBatchNorm) and not last else kind
    if len(shape) == 4:
        return f"{kind} {shape[1]}@{shape[2]}x{shape[3]}"
    return f"{kind} {math.prod(shape[1:])}"


@dataclass
class Lab:
    """A trained model ready for drawings. Its graph keeps per-call state, so calls are
    serialised by a lock (a prediction takes milliseconds)."""

    trained: Trained
    graph: Sequential
    shown: list[int]
    lock: threading.Lock

    @classmethod
    def from_trained(cls, trained: Trained) -> Lab:
        graph = inference_graph(trained.model)
        return cls(trained, graph, shown_layers(graph), threading.Lock())

    @property
    def classes(self) -> list[str]:
        return list(self.trained.data["classes"])

    @property
    def regression(self) -> bool:
        return self.trained.loss_name == "mse"

    def analyse(self, pixels: np.ndarray, target: int | None, *, floats: bool = False) -> dict:
        """Probabilities, layer outputs and the saliency toward ``target`` (default: the
        predicted class) for ``pixels`` (H, W) in [0, 1], as the model was trained on."""
        n_classes = len(self.classes)
        if target is not None and not 0 <= target < n_classes:
            raise ValueError(f"target {target}: give a class index in [0, {n_classes})")
        dtype = self.graph.parameters()[0].dtype  # float32, or float64 in the tests
        x = self.trained.normalize(torch.from_numpy(pixels.reshape(1, -1)).to(dtype))
        started = time.perf_counter()
        with self.lock, torch.no_grad():
            outs: dict[int, Tensor] = {}
            handles = [
                self.graph.layers[i].register_forward_hook(
                    lambda m, a, out, i=i: outs.__setitem__(i, out)
                )
                for i in self.shown
            ]
            try:
                logits = self.graph(x)  # (1, C), or (1, 1) for the regression net
            except BaseException:
                self.graph.clear_saved()
                raise
            finally:
                for h in handles:
                    h.remove()
            pred = int(predicted_classes(logits, self.trained.loss_name, n_classes)[0])
            k = pred if target is None else target
            loss_fn = make_loss(self.trained.loss_name).train()
            label = torch.tensor([float(k)]).view(1, 1) if self.regression else torch.tensor([k])
            loss = loss_fn(logits, label)
            dlogits = loss_fn.backward()[0]  # (1, C)
            try:
                dx = self.graph.backward(dlogits)  # (1, H*W): dL/dx of the normalised input
            finally:
                self.graph.clear_saved()
        server_ms = (time.perf_counter() - started) * 1e3
        if self.regression:
            probs = [0.0] * n_classes
            probs[pred] = 1.0
        else:
            probs = torch.softmax(logits.double(), 1)[0].tolist()
        grad = dx.reshape(pixels.shape) / float(self.trained.data["std"])  # dL/dpixel
        bound = float(grad.abs().max()) or 1.0
        layers = []
        for i in self.shown:
            out = outs[i]
            entry = {
                "index": i,
                "name": describe_layer(
                    self.graph.layers[i], tuple(out.shape), i == len(self.graph.layers) - 1
                ),
                **encode(out[0]),
            }
            if floats:
                entry["values"] = out[0].tolist()
            layers.append(entry)
        result = {
            "classes": self.classes,
            "predicted": pred,
            "target": k,
            "probs": probs,
            "output": logits[0].tolist(),
            "loss": float(loss),
            "input": encode(torch.from_numpy(pixels), 0.0, 1.0),
            "saliency": encode(grad, -bound, bound),
            "layers": layers,
            "model_ms": round(server_ms, 3),
        }
        if floats:
            result["input"]["values"] = pixels.tolist()
            result["saliency"]["values"] = grad.tolist()
        return result
