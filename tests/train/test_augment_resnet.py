"""The resnet recipe's augmentation (crops, flips, random erasing), seeded and resumable
bitwise, and test-time augmentation in evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handgrad import MSELoss
from handgrad.data.augment import (
    augment_batch,
    flips_allowed,
    random_erase,
    random_flip,
    random_shift,
)
from handgrad.data.dataset import DIGITS, FASHION
from handgrad.errors import HandgradError
from handgrad.nn.models import build_model
from handgrad.train import checkpoint as ck
from handgrad.train.callbacks import Augment, Checkpointer, Recorder
from handgrad.train.inference import Trained, check_tta, evaluate, flip_rows, tta_probabilities
from handgrad.train.learner import Learner
from handgrad.train.recipes import recipe_for

from training_helpers import MomentumSGD, SeededLoader, StopAfter


def images(n: int, side: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, side * side, generator=torch.Generator().manual_seed(seed))


def test_flip_mirrors_the_chosen_images_only() -> None:
    x = images(64)
    out = random_flip(x, image_shape=(1, 6, 6), generator=torch.Generator().manual_seed(1))
    mirrored = flip_rows(x, (1, 6, 6))
    flipped = (out == mirrored).all(1)
    kept = (out == x).all(1)
    assert (flipped | kept).all() and 16 < int(flipped.sum()) < 48  # about half, p = 1/2
    assert torch.equal(flip_rows(mirrored, (1, 6, 6)), x)


def test_erase_replaces_one_rectangle_within_the_area_range() -> None:
    x = torch.full((200, 100), 7.0)
    out = random_erase(x, 1.0, image_shape=(1, 10, 10), generator=torch.Generator().manual_seed(2))
    erased = (out != 7.0).reshape(200, 10, 10)
    for m in erased:
        rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(m.sum()) == int(box)  # one filled rectangle
        assert 1 <= int(box) <= 40  # area up to 0.25 of 100 pixels, after rounding each side
    assert torch.equal(random_erase(x, 0.0), x)
    some = random_erase(x, 0.3, image_shape=(1, 10, 10), generator=torch.Generator().manual_seed(3))
    assert 30 < int((some != 7.0).any(1).sum()) < 90  # about 30% of 200 images


def test_augmentation_is_seeded_and_shift_only_draws_are_unchanged() -> None:
    x = images(32)
    kw = {"shift": 1, "flip": True, "erase": 0.5, "image_shape": (1, 6, 6)}
    a = augment_batch(x, generator=torch.Generator().manual_seed(4), **kw)
    b = augment_batch(x, generator=torch.Generator().manual_seed(4), **kw)
    c = augment_batch(x, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    shift_only = augment_batch(
        x, shift=1, image_shape=(1, 6, 6), generator=torch.Generator().manual_seed(4)
    )
    before = random_shift(x, 1, image_shape=(1, 6, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(shift_only, before)  # runs recorded before flips existed replay exactly


def test_flips_only_for_fashion_mnist() -> None:
    assert flips_allowed(list(FASHION)) and not flips_allowed(list(DIGITS))
    assert recipe_for("resnet").flip and not recipe_for("cnn").flip


def fit(folder: Path, epochs: int, *, stop_after: int = 0, resume: bool = False) -> Learner:
    """A tiny resnet on 6x6 images with every augmentation on, checkpointed each epoch."""
    x, y = images(24, seed=6), torch.randn(24, generator=torch.Generator().manual_seed(7))
    net = build_model("resnet", in_features=36, n_classes=1, stem=2, channels=(2, 3),
                      strides=(1, 2), generator=torch.Generator().manual_seed(0))  # fmt: skip
    callbacks = [
        Recorder(),
        Augment(1, flip=True, erase=0.5, seed=3, image_shape=(1, 6, 6)),
        Checkpointer(folder, {"model": {"name": "t", "kwargs": {}}, "config": {"seed": 0}}),
    ]
    if stop_after:
        callbacks.append(StopAfter(stop_after))
    train = SeededLoader(x, y, 8, shuffle=True, seed=5)
    learn = Learner(net, MSELoss(), MomentumSGD(net.parameters(), 0.05), train,
                    SeededLoader(x[:8], y[:8], 8), callbacks)  # fmt: skip
    torch.manual_seed(1234)  # dropout draws from torch's global generator
    start = (0, 0)
    if resume:
        start = ck.restore_learner(learn, ck.load_checkpoint(folder / "last.safetensors"))
    learn.fit(epochs, start_epoch=start[0], start_step=start[1])
    return learn


def test_augmented_resnet_run_resumes_bitwise(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = fit(tmp_path / "a", 3)
        fit(tmp_path / "b", 3, stop_after=1)
        resumed = fit(tmp_path / "b", 3, resume=True)
    finally:
        torch.set_num_threads(threads)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run drew other augmentations"


def test_erase_probability_is_checked() -> None:
    with pytest.raises(ValueError, match="erase is a probability"):
        Augment(1, erase=1.5)


def trained(classes: list[str], loss: str = "cross_entropy") -> Trained:
    model = build_model("resnet", in_features=36, stem=2, channels=(2,), strides=(1,),
                        generator=torch.Generator().manual_seed(0)).eval()  # fmt: skip
    data = {"classes": classes, "image_shape": [1, 6, 6], "mean": 0.5, "std": 0.25}
    return Trained(model, ck.Checkpoint(Path("x.safetensors"), {"data": data, "loss": loss}, {}))


def test_tta_averages_the_image_and_its_mirror() -> None:
    t = trained(list(FASHION))
    x = images(10)
    y = torch.randint(0, 10, (10,), generator=torch.Generator().manual_seed(8))
    probs = tta_probabilities(t, t.normalize(x))
    with torch.no_grad():
        p1 = torch.softmax(t.model(t.normalize(x)).double(), 1)
        p2 = torch.softmax(t.model(t.normalize(flip_rows(x, (1, 6, 6)))).double(), 1)
    torch.testing.assert_close(probs, (p1 + p2) / 2)
    result = evaluate(t, x, y, tta=True)
    assert result.tta_accuracy == pytest.approx(float((probs.argmax(1) == y).double().mean()))
    assert evaluate(t, x, y).tta_accuracy is None


def test_tta_refused_for_digits_and_regression() -> None:
    with pytest.raises(HandgradError, match="changes digits"):
        check_tta(trained(list(DIGITS)))
    with pytest.raises(HandgradError, match="regresses"):
        check_tta(trained(list(FASHION), loss="mse"))
