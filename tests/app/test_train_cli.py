"""``handgrad train / evaluate / predict / lr-find`` in-process, on tiny generated data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handgrad import HandgradError
from handgrad.app.threads import resolve_threads
from handgrad.train.checkpoint import load_checkpoint
from handgrad.train.inference import _mnist_style

from support import run_cli

SIDE = 8  # 8x8 images: 64 inputs, fast to train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second thread costs more in synchronisation than it gains, and on a
    shared machine a two-thread barrier can stall for milliseconds per operation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class c in 0..3 is a bright 3x3 square in quadrant c, on a noisy dark background."""
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, SIDE, SIDE))
    for i, c in enumerate(y):
        r, col = 4 * (c // 2) + rng.integers(0, 2), 4 * (c % 2) + rng.integers(0, 2)
        x[i, r : r + 3, col : col + 3] = rng.integers(180, 256, (3, 3))
    return x.astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An .npz with train/valid/test splits; "fashion" in the name gives non-digit classes, so
    images are read by plain resizing (the quadrant is the class)."""
    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", 256), ("valid", 64), ("test", 64)):
        parts[f"x_{split}"], parts[f"y_{split}"] = make_images(n, rng)
    path = tmp_path_factory.mktemp("data") / "tiny-fashion.npz"
    np.savez(path, **parts)
    return path


ARGS = ("--hidden", "16", "--bs", "32", "--quiet", "--lr", "1e-2", "--shift", "1", "--threads", "1")


def train(data: Path, out: Path, *extra: str):
    return run_cli("train", "--data", str(data), "--out", str(out), *ARGS, *extra)


def epoch_lines(text: str) -> list[str]:
    """The per-epoch lines without their timing."""
    return [re.sub(r"\s+[\d.]+s$", "", ln) for ln in text.splitlines() if ln.startswith("epoch")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    result = train(tiny, out, "--epochs", "4")
    assert result.status == 0, result.err
    return out, result


def test_train_writes_checkpoints_plot_and_metrics(trained) -> None:
    out, result = trained
    last_line = result.out.strip().splitlines()[-1]
    m = re.fullmatch(r"valid_loss (\d\.\d{4}) valid_accuracy (\d\.\d{4})", last_line)
    assert m, last_line
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['valid_loss']:.4f}" == m[1] and f"{metrics['valid_accuracy']:.4f}" == m[2]
    assert metrics["valid_accuracy"] >= 0.9  # the quadrants are easy to tell apart
    assert metrics["epoch"] == 4 and metrics["config"]["hidden"] == [16]
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "history.png"):
        assert (out / name).is_file(), name
    assert len(epoch_lines(result.out)) == 4
    assert result.err == ""
    # the recipe's label smoothing is in train_loss only: the header says so
    assert "label smoothing 0.1 (in train_loss; valid_loss is without it)" in result.out
    assert "4 epochs x 8 steps of 32" in result.out


def test_same_seed_gives_identical_runs(tiny: Path, trained, tmp_path: Path) -> None:
    out, first = trained
    again = train(tiny, tmp_path / "again", "--epochs", "4")
    assert epoch_lines(again.out) == epoch_lines(first.out)
    w1, w2 = weights(out / "last.safetensors"), weights(tmp_path / "again" / "last.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow  # builds the C++ fast path on first use
def test_fast_trains_the_same_run(
    tiny: Path, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--fast`` (FastLearner) is the same computation: the same weights to float rounding."""
    from handgrad import fast

    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    calls = []
    compiled = fast.FastStep._compiled
    monkeypatch.setattr(
        fast.FastStep, "_compiled", lambda self, *a: calls.append(1) or compiled(self, *a)
    )
    out, _ = trained
    quick = train(tiny, tmp_path / "fast", "--epochs", "4", "--fast")
    assert quick.status == 0 and quick.err == "", quick.err
    assert len(calls) == 4 * 8  # every training step (256 rows / 32) went through C++
    w1, w2 = weights(out / "last.safetensors"), weights(tmp_path / "fast" / "last.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


def test_stop_and_resume_equals_straight_run_bitwise(tiny: Path, trained, tmp_path: Path) -> None:
    out, straight = trained
    part = train(tiny, tmp_path / "r", "--epochs", "4", "--stop-after", "2")
    assert part.status == 0 and "--resume" in part.out
    last = str(tmp_path / "r" / "last.safetensors")
    resumed = run_cli("train", "--resume", last, "--quiet", "--threads", "1")
    assert resumed.status == 0, resumed.err
    assert epoch_lines(part.out) + epoch_lines(resumed.out) == epoch_lines(straight.out)
    w1, w2 = weights(out / "last.safetensors"), weights(tmp_path / "r" / "last.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    hist = json.loads((tmp_path / "r" / "last.json").read_text())["callbacks"]["recorder"]
    assert [row["epoch"] for row in hist["history"]] == [1, 2, 3, 4]


def test_resume_refuses_changed_settings(trained) -> None:
    out, _ = trained
    r = run_cli("train", "--resume", str(out / "last.safetensors"), "--bs", "64", "--epochs", "6")
    assert r.status == 2 and "--bs: cannot change when resuming" in r.err


@pytest.mark.parametrize(
    "edit",
    [{"hidden": "eight"}, {"hidden": [-8]}, {"lr": "fast"}, {"epochs": True}, {"model": "nope"}],
    ids=["string-hidden", "negative-hidden", "string-lr", "bool-epochs", "unknown-model"],
)
def test_resume_from_an_edited_sidecar_is_one_line(trained, tmp_path: Path, edit) -> None:
    out, _ = trained
    shutil.copy(out / "last.safetensors", tmp_path / "last.safetensors")
    info = json.loads((out / "last.json").read_text())
    info["config"].update(edit)
    (tmp_path / "last.json").write_text(json.dumps(info))
    r = run_cli("train", "--resume", str(tmp_path / "last.safetensors"), "--epochs", "6")
    assert r.status == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"{tmp_path / 'last.json'}: the saved training config is not valid" in r.err


def test_evaluate_matches_training_metrics_and_saves_confusion(trained, tiny: Path) -> None:
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    r = run_cli("evaluate", str(out / "last.safetensors"), "--data", str(tiny), "--split", "valid")
    assert r.status == 0, r.err
    m = re.search(r"^loss (\d\.\d{4}) accuracy (\d\.\d{4})$", r.out, re.M)
    assert m and float(m[2]) == pytest.approx(metrics["valid_accuracy"], abs=1e-4)
    assert float(m[1]) == pytest.approx(metrics["valid_loss"], abs=2e-4)
    assert (out / "confusion-tiny-fashion-valid.png").is_file()
    test = run_cli("evaluate", str(out / "best.safetensors"))  # its own data, the test split
    assert test.status == 0 and "test (64 images)" in test.out


def test_predict_reads_images_of_any_size(trained, tiny: Path, tmp_path: Path) -> None:
    out, _ = trained
    with np.load(tiny) as z:
        x, y = z["x_test"][:8], z["y_test"][:8]
    paths = []
    for i, img in enumerate(x):
        big = Image.fromarray(255 - img).resize((40, 40), Image.Resampling.NEAREST)
        paths.append(tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}")
        big.save(paths[-1])  # dark on light, 5x larger: predict must invert and shrink
    r = run_cli("predict", str(out / "best.safetensors"), *map(str, paths))
    assert r.status == 0, r.err
    lines = r.out.strip().splitlines()
    assert len(lines) == 8
    top1 = [ln.split(": ")[1].split()[0] for ln in lines]
    names = load_checkpoint(out / "best.safetensors").info["data"]["classes"]
    hits = sum(t == names[c] for t, c in zip(top1, y, strict=True))
    assert hits >= 7, r.out
    probs = [float(p) for p in re.findall(r" (\d\.\d{3})", lines[0])]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3


def test_digit_images_are_centred_like_mnist() -> None:
    canvas = np.zeros((100, 60), np.float32)
    canvas[5:45, 40:50] = 1.0  # a tall bar in the top-right corner
    out = _mnist_style(canvas, 28, 28, Path("x.png"))
    rows = np.nonzero(out > 0.1)[0]
    assert rows.max() - rows.min() + 1 <= 21  # scaled into MNIST's 20-pixel box
    yy, xx = np.mgrid[0:28, 0:28]
    assert abs((yy * out).sum() / out.sum() - 13.5) <= 1.0
    assert abs((xx * out).sum() / out.sum() - 13.5) <= 1.0


def test_lr_find_writes_a_plot(tiny: Path, tmp_path: Path) -> None:
    png = tmp_path / "lr.png"
    r = run_cli(
        "lr-find",
        "--data",
        str(tiny),
        "--hidden",
        "16",
        "--bs",
        "32",
        "--steps",
        "30",
        "--out",
        str(png),
        "--quiet",
        "--threads",
        "1",
    )
    assert r.status == 0, r.err
    assert png.is_file() and re.search(r"suggested lr \d\.\d\de-\d\d", r.out)
    # the command to train at that rate, with the options given here
    line = r.out.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"handgrad train --data {re.escape(str(tiny))} --hidden 16 --bs 32 --threads 1 "
        r"--lr \d\.\de-\d\d",
        line,
    ), line


# ------------------------------------------------------------------------------ bad input
def test_missing_checkpoint(tmp_path: Path) -> None:
    for cmd in ("evaluate", "predict"):
        r = run_cli(
            cmd, str(tmp_path / "nope.safetensors"), *(["x.png"] if cmd == "predict" else [])
        )
        assert r.status == 2 and "no such checkpoint" in r.err and r.err.count("\n") == 1


def test_corrupt_safetensors(trained, tmp_path: Path) -> None:
    out, _ = trained
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"c{suffix}").write_bytes((out / f"best{suffix}").read_bytes())
    data = bytearray((tmp_path / "c.safetensors").read_bytes())
    (tmp_path / "c.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    r = run_cli("evaluate", str(tmp_path / "c.safetensors"))
    assert r.status == 2 and "c.safetensors" in r.err and r.err.count("\n") == 1


def test_wrong_input_size_for_the_model(trained, tmp_path: Path) -> None:
    out, _ = trained
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (20, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 4, 20)
    np.savez(tmp_path / "big.npz", x_train=x, y_train=y, x_valid=x, y_valid=y)
    r = run_cli("evaluate", str(out / "best.safetensors"), "--data", str(tmp_path / "big.npz"))
    assert r.status == 2 and "1x28x28 (784 values)" in r.err and "1x8x8 (64 values)" in r.err


def test_unreadable_image(trained, tmp_path: Path) -> None:
    out, _ = trained
    bad = tmp_path / "digit.png"
    bad.write_text("this is not a picture")
    r = run_cli("predict", str(out / "best.safetensors"), str(bad))
    assert r.status == 2 and "digit.png: cannot read it as an image" in r.err
    r = run_cli("predict", str(out / "best.safetensors"), str(tmp_path / "absent.png"))
    assert r.status == 2 and "absent.png: no such file" in r.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "nope"), "--model 'nope': unknown"),
        (("--hidden", "0,4"), "--hidden"),
        (("--epochs", "0"), "--epochs 0"),
        (("--opt", "rmsprop"), "--opt 'rmsprop'"),
        (("--model", "lesson", "--hidden", "8"), "no hidden widths"),
        (("--model", "lesson", "--dropout", "0.1"), "no dropout to set"),
        (("--dropout", "1.5"), "--dropout 1.5"),
        (("--threads", "0"), "--threads '0'"),
    ],
)
def test_bad_options(tiny: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    r = run_cli("train", "--data", str(tiny), "--out", str(tmp_path / "x"), "--quiet", *args)
    assert r.status == 2 and message in r.err


def test_lesson_model_regresses_the_class_index(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "lesson"
    r = run_cli(
        "train",
        "--data",
        str(tiny),
        "--model",
        "lesson",
        "--epochs",
        "2",
        "--bs",
        "32",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
    )
    assert r.status == 0, r.err
    assert "loss mse" in r.out and re.search(r"valid_accuracy \d\.\d{4}$", r.out.strip())
    img = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(img)
    p = run_cli("predict", str(out / "best.safetensors"), str(img))
    assert p.status == 0 and "(regression output" in p.out


def test_threads_auto_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_threads("3", cpu) == 3
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = torch.get_num_threads()
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert resolve_threads("auto", cpu) == cores  # idle: every core
    monkeypatch.setattr("os.getloadavg", lambda: (50.0, 0.0, 0.0))
    assert resolve_threads("auto", cpu) == 1  # busy: spinning threads would wait on each other
    with pytest.raises(HandgradError, match="--threads 'many'"):
        resolve_threads("many", cpu)
