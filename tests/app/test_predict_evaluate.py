"""``handgrad predict`` over many files (each one's result or error), ``--show``, image bombs;
``handgrad evaluate`` on data of other classes, ``--data-dir`` and ``--no-download``."""

from __future__ import annotations

import shutil
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handgrad.train.inference import MAX_IMAGE_PIXELS, load_trained, prepare_image

from support import bright_quadrant_data, run_cli

SIDE = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch model on 8x8 images whose class (0..3) is the bright quadrant, and its data
    (``fashion`` in the name: Fashion-MNIST's class names, images read by plain resizing)."""
    data = bright_quadrant_data(tmp_path_factory.mktemp("data") / "quads-fashion.npz", SIDE)
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    r = run_cli("train", "--data", str(data), "--out", str(out), "--epochs", "1", "--hidden",
                "8", "--bs", "32", "--quiet", "--threads", "1")  # fmt: skip
    torch.set_num_threads(threads)
    assert r.status == 0, r.err
    return out / "best.safetensors", data


def quadrant_png(path: Path, quadrant: int) -> Path:
    img = np.zeros((32, 32), np.uint8)
    img[16 * (quadrant // 2) : 16 * (quadrant // 2) + 16, 16 * (quadrant % 2) :][:, :16] = 255
    Image.fromarray(img).save(path)
    return path


# ---------------------------------------------------------------------------------- predict
def test_predict_reports_every_file_and_exits_2_if_any_failed(run, tmp_path):
    ckpt, _ = run
    good = [quadrant_png(tmp_path / f"q{i}.png", i) for i in range(3)]
    (tmp_path / "bad.png").write_text("not a picture")
    files = [good[0], tmp_path / "bad.png", good[1], tmp_path / "absent.png", good[2]]
    r = run_cli("predict", str(ckpt), *map(str, files))
    assert r.status == 2
    lines = r.out.strip().splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [str(p) for p in good]  # in order, all three
    errors = r.err.strip().splitlines()
    assert len(errors) == 3, r.err
    assert "bad.png: cannot read it as an image" in errors[0]
    assert "absent.png: no such file" in errors[1]
    assert errors[2] == "handgrad predict: 2 of 5 images could not be read"


def test_predict_show_writes_what_the_model_saw(run, tmp_path):
    ckpt, _ = run
    a = quadrant_png(tmp_path / "a.png", 1)
    (tmp_path / "other").mkdir()
    b = quadrant_png(tmp_path / "other" / "a.png", 2)  # the same name: kept apart
    seen = tmp_path / "seen"
    r = run_cli("predict", str(ckpt), str(a), str(b), "--show", str(seen))
    assert r.status == 0, r.err
    assert sorted(p.name for p in seen.iterdir()) == ["a-2.png", "a.png"]
    trained = load_trained(ckpt)
    for png, source in ((seen / "a.png", a), (seen / "a-2.png", b)):
        pixels = np.asarray(Image.open(png))
        assert pixels.shape == (SIDE, SIDE)  # the model's input size, not the picture's
        expected = (prepare_image(source, trained) * 255).round().astype(np.uint8)
        assert np.array_equal(pixels, expected)


def test_predict_show_onto_a_file_is_one_line(run, tmp_path):
    ckpt, _ = run
    (tmp_path / "seen").write_text("")
    r = run_cli("predict", str(ckpt), str(quadrant_png(tmp_path / "a.png", 0)), "--show",
                str(tmp_path / "seen"))  # fmt: skip
    assert r.status == 2 and "is a file, not a folder" in r.err and r.err.count("\n") == 1


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` 1-bit pixels, with one empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
    path.write_bytes(blob + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 6000)], ids=["pil-bomb", "over-cap"])
def test_predict_refuses_an_image_bomb_from_its_header(run, tmp_path, size):
    ckpt, _ = run
    png = png_header_only(tmp_path / "bomb.png", *size)
    assert png.stat().st_size < 100 and size[0] * size[1] > MAX_IMAGE_PIXELS
    tracemalloc.start()
    start = time.perf_counter()
    try:
        r = run_cli("predict", str(ckpt), str(png))
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status == 2
    assert f"bomb.png: more than {MAX_IMAGE_PIXELS:,} pixels" in r.err
    assert r.err.count("\n") == 2  # its line, and the count of failed images
    assert seconds < 0.5 and peak < 100 << 20, (seconds, peak)


# --------------------------------------------------------------------------------- evaluate
def test_evaluate_on_data_of_other_classes_says_so(run, tmp_path):
    ckpt, data = run
    digits = shutil.copy(data, tmp_path / "quads.npz")  # same pixels, but digit class names
    r = run_cli("evaluate", str(ckpt), "--data", str(digits), "--out", str(tmp_path / "c.png"))
    assert r.status == 2 and r.err.count("\n") == 1, r.err
    assert (
        "its classes (0, 1, 2, ...) are not the model's (T-shirt/top, Trouser, Pullover, " in r.err
    )
    assert "--other-classes" in r.err
    r = run_cli("evaluate", str(ckpt), "--data", str(digits), "--out", str(tmp_path / "c.png"),
                "--other-classes")  # fmt: skip
    assert r.status == 0, r.err
    assert (tmp_path / "c.png").is_file()


def test_evaluate_takes_data_dir_and_no_download(run, tmp_path, monkeypatch):
    ckpt, _ = run
    monkeypatch.chdir(tmp_path)  # no data/mnist.pkl.gz here
    cache = tmp_path / "cache"
    r = run_cli("evaluate", str(ckpt), "--data", "mnist", "--no-download", "--data-dir",
                str(cache))  # fmt: skip
    assert r.status == 2 and r.err.count("\n") == 1, r.err
    assert f"downloading is off; allow the download, or put the files in {cache / 'mnist'}" in r.err


# ------------------------------------------------------------------------- hostile sidecars
@pytest.mark.parametrize(
    "kwargs",
    [{"hidden": "eight"}, {"hidden": [-8]}, {"bogus": 1}, {"hidden": [8], "dropout": "x"}],
    ids=["string", "negative", "unknown", "bad-dropout"],
)
def test_a_sidecar_with_bad_model_kwargs_is_one_line(run, tmp_path, kwargs):
    """Edited or foreign sidecars: one line naming the file and the kwargs, exit 2."""
    import json

    ckpt, data = run
    shutil.copy(ckpt, tmp_path / "best.safetensors")
    info = json.loads(ckpt.with_suffix(".json").read_text())
    info["model"]["kwargs"] = kwargs
    (tmp_path / "best.json").write_text(json.dumps(info))
    r = run_cli("evaluate", str(tmp_path / "best.safetensors"), "--data", str(data))
    assert r.status == 2, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "best.json" in r.err and "model" in r.err and "Traceback" not in r.err
