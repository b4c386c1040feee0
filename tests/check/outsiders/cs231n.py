"""CS231n-assignment-style layers: ``*_forward`` returns ``(out, cache)``, ``*_backward(dout,
cache)`` returns the gradients; small classes wrap them. ``affine`` is written in numpy, as in
the assignment; the rest were ported to torch."""

import numpy as np
import torch


def affine_forward(x, w, b):
    xn, wn, bn = x.numpy(), w.numpy(), b.numpy()
    out = xn.reshape(xn.shape[0], -1).dot(wn) + bn
    return torch.from_numpy(out), (xn, wn, bn)


def affine_backward(dout, cache):
    x, w, _ = cache
    dout = dout.numpy()
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return torch.from_numpy(dx), torch.from_numpy(dw), torch.from_numpy(db)


def affine_backward_no_t(dout, cache):
    x, w, _ = cache
    dout = dout.numpy()
    dx = dout.dot(w).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return torch.from_numpy(dx), torch.from_numpy(dw), torch.from_numpy(db)


class Affine:
    backward_fn = staticmethod(affine_backward)

    def __init__(self, w, b):
        self.w = w
        self.b = b

    def __call__(self, x):
        self.x = x
        out, self.cache = affine_forward(x, self.w, self.b)
        return out

    def backward(self, dout):
        self.x.g, self.w.g, self.b.g = self.backward_fn(dout, self.cache)


class AffineNoTranspose(Affine):
    """BUG: dx = dout.dot(w) (w is square, so the shape is right)."""

    backward_fn = staticmethod(affine_backward_no_t)


def relu_forward(x):
    return x.clamp(min=0), x


def relu_backward(dout, cache):
    x = cache
    return dout * (x > 0)


def relu_backward_inplace(dout, cache):
    x = cache
    dx = dout
    dx[x <= 0] = 0
    return dx


class ReLU:
    backward_fn = staticmethod(relu_backward)

    def __call__(self, x):
        self.x = x
        out, self.cache = relu_forward(x)
        return out

    def backward(self, dout):
        self.x.g = self.backward_fn(dout, self.cache)


class ReLUInplace(ReLU):
    """BUG: ``dx = dout; dx[x <= 0] = 0`` zeroes the caller's dout."""

    backward_fn = staticmethod(relu_backward_inplace)


def softmax_loss(x, y):
    """Loss and gradient together, as in the assignment."""
    shifted = x - x.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    probs = log_probs.exp()
    n = x.shape[0]
    loss = -log_probs[torch.arange(n), y].sum() / n
    dx = probs.clone()
    dx[torch.arange(n), y] -= 1
    dx /= n
    return loss, dx


def softmax_loss_no_mean(x, y):
    shifted = x - x.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    probs = log_probs.exp()
    n = x.shape[0]
    loss = -log_probs[torch.arange(n), y].sum() / n
    dx = probs.clone()
    dx[torch.arange(n), y] -= 1
    return loss, dx


class SoftmaxLoss:
    loss_fn = staticmethod(softmax_loss)

    def __call__(self, x, y):
        self.x = x
        loss, self.dx = self.loss_fn(x, y)
        return loss

    def backward(self, dout):
        self.x.g = self.dx * dout


class SoftmaxLossNoMean(SoftmaxLoss):
    """BUG: dx not divided by N."""

    loss_fn = staticmethod(softmax_loss_no_mean)


def svm_loss(x, y, count_correct=True):
    n = x.shape[0]
    rows = torch.arange(n)
    correct = x[rows, y][:, None]
    margins = (x - correct + 1.0).clamp(min=0)
    margins[rows, y] = 0
    loss = margins.sum() / n
    dx = (margins > 0).to(x.dtype)
    if count_correct:
        dx[rows, y] -= dx.sum(dim=1)
    dx /= n
    return loss, dx


class SvmLoss:
    count_correct = True

    def __call__(self, x, y):
        self.x = x
        loss, self.dx = svm_loss(x, y, self.count_correct)
        return loss

    def backward(self, dout):
        self.x.g = self.dx * dout


class SvmLossNoCorrectClass(SvmLoss):
    """BUG: forgets the correct class's column of the gradient."""

    count_correct = False


def batchnorm_forward(x, gamma, beta, bn_param, unbiased=False):
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    mu = x.mean(dim=0)
    var = x.var(dim=0, unbiased=unbiased)
    std = (var + eps).sqrt()
    xhat = (x - mu) / std
    out = gamma * xhat + beta
    bn_param["running_mean"] = momentum * bn_param["running_mean"] + (1 - momentum) * mu.detach()
    bn_param["running_var"] = momentum * bn_param["running_var"] + (1 - momentum) * var.detach()
    return out, (xhat, gamma, std)


def batchnorm_backward(dout, cache):
    xhat, gamma, std = cache
    n = dout.shape[0]
    dgamma = (dout * xhat).sum(dim=0)
    dbeta = dout.sum(dim=0)
    dxhat = dout * gamma
    dx = (n * dxhat - dxhat.sum(dim=0) - xhat * (dxhat * xhat).sum(dim=0)) / (n * std)
    return dx, dgamma, dbeta


class BatchNorm:
    """Train-mode batch norm; running statistics are reassigned in ``bn_param``."""

    unbiased = False

    def __init__(self, gamma, beta):
        self.gamma, self.beta = gamma, beta
        self.bn_param = {
            "mode": "train",
            "eps": 1e-5,
            "momentum": 0.9,
            "running_mean": torch.zeros_like(gamma),
            "running_var": torch.ones_like(gamma),
        }

    def __call__(self, x):
        self.x = x
        out, self.cache = batchnorm_forward(x, self.gamma, self.beta, self.bn_param, self.unbiased)
        return out

    def backward(self, dout):
        self.x.g, self.gamma.g, self.beta.g = batchnorm_backward(dout, self.cache)


class BatchNormUnbiasedVar(BatchNorm):
    """BUG: the forward's torch.var defaults to N-1; the backward formula assumes N."""

    unbiased = True


def layernorm_forward(x, gamma, beta, eps=1e-5):
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    std = (var + eps).sqrt()
    xhat = (x - mu) / std
    return gamma * xhat + beta, (x, xhat, gamma, std)


def layernorm_backward(dout, cache):
    x, xhat, gamma, std = cache
    d = x.shape[1]
    dgamma = (dout * xhat).sum(dim=0)
    dbeta = dout.sum(dim=0)
    dxhat = dout * gamma
    dx = d * dxhat - dxhat.sum(dim=1, keepdim=True) - xhat * (dxhat * xhat).sum(1, keepdim=True)
    return dx / (d * std), dgamma, dbeta


def layernorm_backward_x_for_xhat(dout, cache):
    dx, _, dbeta = layernorm_backward(dout, cache)
    x = cache[0]
    return dx, (dout * x).sum(dim=0), dbeta


class LayerNorm:
    backward_fn = staticmethod(layernorm_backward)

    def __init__(self, gamma, beta):
        self.gamma, self.beta = gamma, beta

    def __call__(self, x):
        self.x = x
        out, self.cache = layernorm_forward(x, self.gamma, self.beta)
        return out

    def backward(self, dout):
        self.x.g, self.gamma.g, self.beta.g = self.backward_fn(dout, self.cache)


class LayerNormGammaUsesX(LayerNorm):
    """BUG: dgamma = sum(dout * x) instead of sum(dout * xhat)."""

    backward_fn = staticmethod(layernorm_backward_x_for_xhat)
