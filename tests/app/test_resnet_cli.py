"""``--model resnet`` through train / evaluate --tta / predict / lr-find, and ``data show
--augment``, in-process on tiny generated Fashion-MNIST-named data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import bright_quadrant_data, run_cli

SIDE = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = bright_quadrant_data(tmp_path_factory.mktemp("data") / "quads-fashion.npz")
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    r = run_cli("train", "--data", str(data), "--model", "resnet", "--out", str(out),
                "--epochs", "1", "--bs", "32", "--quiet", "--threads", "1")  # fmt: skip
    torch.set_num_threads(threads)
    assert r.status == 0, r.err
    return out / "best.safetensors", data


def test_train_resnet_writes_a_checkpoint_of_the_model(run) -> None:
    from handgrad.nn.layers import ResBlock
    from handgrad.train.inference import load_trained

    ckpt, _ = run
    trained = load_trained(ckpt)
    assert trained.ckpt.info["model"]["name"] == "resnet"
    assert sum(isinstance(m, ResBlock) for m in trained.model.modules()) == 4


def test_evaluate_tta_reports_both_figures(run, tmp_path: Path) -> None:
    ckpt, data = run
    r = run_cli("evaluate", str(ckpt), "--data", str(data), "--tta", "--out",
                str(tmp_path / "c.png"))  # fmt: skip
    assert r.status == 0, r.err
    assert "accuracy" in r.out and "tta accuracy" in r.out
    plain = run_cli("evaluate", str(ckpt), "--data", str(data), "--out", str(tmp_path / "d.png"))
    assert plain.status == 0 and "tta accuracy" not in plain.out


def test_evaluate_tta_refuses_digits(tmp_path: Path) -> None:
    digits = bright_quadrant_data(tmp_path / "quads.npz")  # no "fashion": digit class names
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(digits), "--model", "resnet", "--out", str(out),
                "--epochs", "1", "--bs", "32", "--quiet", "--threads", "1")  # fmt: skip
    assert r.status == 0, r.err
    r = run_cli("evaluate", str(out / "best.safetensors"), "--tta")
    assert r.status == 2 and "--tta" in r.err and "digits" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_predict_and_lr_find_with_resnet(run, tmp_path: Path) -> None:
    ckpt, data = run
    img = np.zeros((16, 16), np.uint8)
    img[:8, :8] = 255
    Image.fromarray(img).save(tmp_path / "q.png")
    r = run_cli("predict", str(ckpt), str(tmp_path / "q.png"))
    assert r.status == 0, r.err
    png = tmp_path / "lr.png"
    r = run_cli("lr-find", "--data", str(data), "--model", "resnet", "--bs", "16", "--steps",
                "8", "--out", str(png), "--quiet", "--threads", "1")  # fmt: skip
    assert r.status == 0, r.err
    assert png.is_file()


def test_data_show_augment_draws_augmented_samples(run, tmp_path: Path) -> None:
    _, data = run
    png = tmp_path / "aug.png"
    r = run_cli("data", "show", str(data), "--augment", "--count", "4", "--out", str(png))
    assert r.status == 0, r.err
    assert png.is_file() and "augmented samples" in r.out


def test_flip_and_erase_are_options_saved_with_the_run(run, tmp_path: Path) -> None:
    import json

    ckpt, data = run
    saved = json.loads(ckpt.with_suffix(".json").read_text())["config"]
    assert (saved["flip"], saved["erase"]) == (True, 0.25)  # the resnet recipe's
    base = ("train", "--data", str(data), "--hidden", "8", "--epochs", "1", "--bs", "32",
            "--threads", "1")  # fmt: skip
    r = run_cli(*base, "--flip", "--erase", "0.5", "--out", str(tmp_path / "mlp"))
    assert r.status == 0, r.err
    assert "horizontal flips" in r.out and "random erasing p=0.5" in r.out
    saved = json.loads((tmp_path / "mlp" / "last.json").read_text())["config"]
    assert (saved["flip"], saved["erase"]) == (True, 0.5)
    plain = run_cli(*base, "--no-flip", "--out", str(tmp_path / "plain"))
    assert plain.status == 0 and "flips" not in plain.out and "erasing" not in plain.out
    bad = run_cli(*base, "--erase", "2", "--out", str(tmp_path / "bad"))
    assert bad.status == 2 and "--erase 2.0: must be in [0, 1]" in bad.err
