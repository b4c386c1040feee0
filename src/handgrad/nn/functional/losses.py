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


# ----------------------------------------------------------------------------- cross-entropy
CrossEntropyCache = tuple[Tensor, Tensor, float]


def cross_entropy_forward(
    logits: Tensor, labels: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, CrossEntropyCache]:
    """Mean cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,).

    ``log p = logits - logsumexp(logits)`` row by row, with
    ``logsumexp(x) = m + log(sum_c exp(x_c - m))``, ``m = max_c x_c``, that is
    ``log p_c = (x_c - m) - log(sum_c exp(x_c - m))``: subtracting the row maximum keeps every
    ``exp`` in (0, 1] (and the sum in [1, C]), so logits of +-1e4 give finite results where the
    naive ``log(sum(exp(x)))`` overflows to ``inf``.

    ``L = -(1/N) sum_n sum_c t_nc log p_nc`` with the target distribution
    ``t = (1 - eps) onehot(label) + eps / C`` (``eps`` = ``label_smoothing``; ``eps = 0`` is the
    plain negative log-likelihood ``-(1/N) sum_n log p_{n, label_n}``), as in
    ``torch.nn.functional.cross_entropy``.

    Labels are assumed valid (int64 in [0, C)); :class:`handgrad.nn.layers.losses.CrossEntropyLoss`
    checks them. Returns the scalar loss and the cache ``(log_probs, labels, eps)``.
    """
    # Shift first, then take the log-sum-exp of the shifted values. Subtracting nearby floats is
    # exact, so log p keeps full precision even at logits of 1e4 in float32, where
    # ``logits - logsumexp(logits)`` would round the 1e4-sized sum to 1e-3.
    shifted = logits - logits.amax(dim=1, keepdim=True)  # (N, C), every entry <= 0
    # In place on the fresh ``shifted``: one (N, C) buffer for the whole forward.
    log_probs = shifted.sub_(shifted.exp().sum(dim=1, keepdim=True).log_())  # (N, C)
    nll = -log_probs.gather(1, labels.unsqueeze(1)).mean()  # picks log p[n, label_n]
    if label_smoothing == 0.0:
        return nll, (log_probs, labels, 0.0)
    # sum_c (eps / C) log p_nc averaged over n is eps times the mean over all N*C entries.
    loss = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean()
    return loss, (log_probs, labels, label_smoothing)


def cross_entropy_backward(dout: Tensor, cache: CrossEntropyCache) -> Tensor:
    """``dL/dlogits = (softmax(logits) - t) / N``, scaled by the upstream ``dout``.

    Softmax and log-likelihood fuse into this one expression: the Jacobian of softmax,
    multiplied by ``-t / p``, collapses to ``p - t`` (``t`` sums to 1 in every row). ``p`` is
    recomputed as ``exp(log p)`` here rather than stored by forward, so an evaluation-only
    forward never pays for it.
    """
    log_probs, labels, eps = cache
    n, c = log_probs.shape
    dlogits = log_probs.exp()  # (N, C) softmax probabilities, a fresh tensor we may modify
    if eps != 0.0:
        dlogits.sub_(eps / c)  # the uniform part of the target
    # The one-hot part: subtract (1 - eps) at each row's label column.
    hit = log_probs.new_full((1, 1), eps - 1.0).expand(n, 1)  # (N, 1), one value
    dlogits.scatter_add_(1, labels.unsqueeze(1), hit)
    # dout stays a 0-dim tensor: no host synchronisation on an accelerator.
    return dlogits.mul_(dout / n)  # (N, C)
