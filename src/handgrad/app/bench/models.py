"""The same network on both sides: weights drawn once and built into a handgrad and a
``torch.nn`` model, and each side's parameters (or gradients) by handgrad's names and layout,
which is what the correctness guard compares."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from handgrad.interop.torch import to_torch
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.module import Module, Sequential

Init = list[tuple[Tensor, Tensor]]  # (weight (in, out), bias (out,)) per linear layer


def mlp_init(sizes: list[int], seed: int, device: torch.device | str = "cpu") -> Init:
    """Kaiming-initialised weights for a Linear-ReLU-...-Linear net of widths ``sizes``, drawn
    on the CPU and copied to ``device`` (the models built from them live there too)."""
    g = torch.Generator().manual_seed(seed + 1)
    layers = [
        Linear(a, b, generator=g, nonlinearity="relu" if i < len(sizes) - 2 else "linear")
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]
    return [
        (lin.weight.detach().to(device, copy=True), lin.bias.detach().to(device, copy=True))
        for lin in layers
    ]


def handgrad_mlp(init: Init) -> Sequential:
    layers: list[Module] = []
    for i, (w, b) in enumerate(init):
        lin = Linear(w.shape[0], w.shape[1]).to(w.device)  # then overwritten on the device
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers += [lin] if i == len(init) - 1 else [lin, ReLU()]
    return Sequential(*layers)


def torch_mlp(init: Init) -> nn.Module:
    """The ``torch.nn`` twin of :func:`handgrad_mlp`, converted by ``to_torch``."""
    return to_torch(handgrad_mlp(init))


def handgrad_tensors(model: Module, *, grads: bool) -> dict[str, Tensor]:
    """Parameters (or their ``.g``) by name, in handgrad's layout."""
    out = {}
    for name, p in model.named_parameters():
        t = p.g if grads else p
        if t is not None:
            out[("grad:" if grads else "param:") + name] = t.detach().clone().as_subclass(Tensor)
    return out


def torch_tensors(model: nn.Module, names: list[str], *, grads: bool) -> dict[str, Tensor]:
    """Parameters (or ``.grad``) of a torch twin, named and laid out as handgrad's."""
    out = {}
    for name, p in zip(names, model.parameters(), strict=True):
        t = p.grad if grads else p
        if t is not None:
            t = t.detach().clone()
            if name.endswith("weight") and t.ndim == 2 and isinstance(_owner(model, p), nn.Linear):
                t = t.t().contiguous()  # torch stores (out, in)
            out[("grad:" if grads else "param:") + name] = t
    return out


def _owner(model: nn.Module, p: Tensor) -> nn.Module | None:
    for m in model.modules():
        if any(q is p for q in m.parameters(recurse=False)):
            return m
    return None
