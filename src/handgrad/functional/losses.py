"""Losses: forward returns (loss, cache); backward returns dL/dinput scaled by dout."""

from __future__ import annotations

import torch
from torch import Tensor


def mse_forward(inp: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``L = (1/M) sum_i (input_i - target_i)^2`` over all M elements.

    ``input`` may carry a trailing size-1 dimension that ``target`` lacks (the lesson's (N, 1)
    predictions against (N,) targets): it is viewed as ``target``'s shape first. Broadcasting the
    two instead would silently build an (N, N) matrix, the classic bug this guards against.
    Returns the loss and the cache ``diff = input - target``.
    """
    if inp.numel() != target.numel():
        raise ValueError(
            f"mse: input has {inp.numel()} elements {tuple(inp.shape)} but target has "
            f"{target.numel()} {tuple(target.shape)}; give one prediction per target value"
        )
    diff = inp.reshape(target.shape) - target  # target's shape
    return diff.pow(2).mean(), diff


def mse_backward(dout: Tensor, diff: Tensor, input_shape: torch.Size) -> Tensor:
    """``dL/dinput_i = 2 (input_i - target_i) / M``, scaled by the upstream ``dout``."""
    return (diff * (2.0 * dout / diff.numel())).reshape(input_shape)
