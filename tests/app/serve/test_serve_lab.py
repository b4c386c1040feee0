"""The Draw page's numbers: the folded inference graph computes the model's evaluation-mode
function, and its hand-written input gradient matches autograd and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handgrad.app.serve.lab import Lab, encode, inference_graph
from handgrad.nn.models import build_model
from handgrad.train.inference import Trained


class _Ckpt:
    def __init__(self, loss: str) -> None:
        self.info = {
            "loss": loss,
            "data": {"mean": 0.13, "std": 0.31, "classes": [str(d) for d in range(10)]},
        }


def _trained(name: str, **kwargs: object) -> Trained:
    """A model with non-trivial batch-norm statistics and weights, in eval mode, float64."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs).double()
    for m in model.modules():  # running statistics far from (0, 1): folding must use them
        if hasattr(m, "running_mean"):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    loss = "mse" if name == "lesson" else "cross_entropy"
    return Trained(model, _Ckpt(loss))  # type: ignore[arg-type]


MODELS = [
    ("mlp", {"hidden": (32, 16)}),
    ("cnn", {"channels": (4, 8), "strides": (1, 2)}),
    ("resnet", {}),
]


@pytest.mark.parametrize(
    ("name", "kwargs"), [*MODELS, ("cnn", {"channels": (4,), "strides": (2,), "fused": False})]
)
def test_inference_graph_computes_the_eval_function(name: str, kwargs: dict) -> None:
    t = _trained(name, **kwargs)
    x = torch.randn(5, 784, dtype=torch.float64)
    graph = inference_graph(t.model)
    with torch.no_grad():
        want = t.model(x)
        got = graph(x)
    graph.clear_saved()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _autograd_saliency(t: Trained, pixels: torch.Tensor, k: int) -> torch.Tensor:
    """dL_k/dpixel by torch autograd through the eval-mode model (the reference)."""
    p = pixels.clone().reshape(1, -1).requires_grad_(True)
    with torch.enable_grad():
        out = t.model(t.normalize(p))
        if t.loss_name == "mse":
            loss = ((out - float(k)) ** 2).mean()
        else:
            loss = torch.nn.functional.cross_entropy(out, torch.tensor([k]))
        (g,) = torch.autograd.grad(loss, p)
    return g.reshape(pixels.shape)


@pytest.mark.parametrize(("name", "kwargs"), [*MODELS, ("lesson", {})])
def test_saliency_is_the_input_gradient(name: str, kwargs: dict) -> None:
    t = _trained(name, **kwargs)
    lab = Lab.from_trained(t)
    lab.graph.double()
    pixels = torch.rand(28, 28, dtype=torch.float64)
    for k in (3, 7):
        r = lab.analyse(pixels.numpy(), k, floats=True)
        got = torch.tensor(r["saliency"]["values"], dtype=torch.float64)
        torch.testing.assert_close(got, _autograd_saliency(t, pixels, k), rtol=1e-7, atol=1e-10)
        # central finite differences on the pixels with the largest gradients
        loss = _loss_fn(t, k)
        for idx in got.abs().flatten().topk(3).indices.tolist():
            e = torch.zeros(784, dtype=torch.float64)
            e[idx] = 1e-6
            fd = (loss(pixels.flatten() + e) - loss(pixels.flatten() - e)) / 2e-6
            assert abs(fd - float(got.flatten()[idx])) <= 1e-5 * max(1.0, abs(fd))
        assert r["target"] == k
        assert len(r["probs"]) == 10


def _loss_fn(t: Trained, k: int):
    def loss(flat: torch.Tensor) -> float:
        with torch.no_grad():
            out = t.model(t.normalize(flat.reshape(1, -1)))
            if t.loss_name == "mse":
                return float(((out - k) ** 2).mean())
            return float(torch.nn.functional.cross_entropy(out, torch.tensor([k])))

    return loss


def test_layers_shown_and_default_target() -> None:
    lab = Lab.from_trained(_trained("cnn", channels=(4, 8), strides=(1, 2)))
    r = lab.analyse(np.random.default_rng(0).random((28, 28)), None)
    assert r["target"] == r["predicted"] == int(np.argmax(r["probs"]))
    shapes = [tuple(entry["shape"]) for entry in r["layers"]]
    assert shapes == [(4, 28, 28), (8, 14, 14), (8,), (10,)]
    with pytest.raises(ValueError, match="target 10"):
        lab.analyse(np.zeros((28, 28)), 10)


def test_encode_bytes_cover_the_range() -> None:
    e = encode(torch.tensor([[-1.0, 0.0], [0.5, 1.0]]), -1.0, 1.0)
    import base64

    assert list(base64.b64decode(e["data"])) == [0, 128, 191, 255]
    assert e["shape"] == [2, 2]
