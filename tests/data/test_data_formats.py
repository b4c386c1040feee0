"""Every file format round-trips; every kind of bad file gets its own one-line error.

All files are small ones the tests write (60 train + 20 test images of 28x28).
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from handgrad.data import load_dataset
from handgrad.data.formats.idx import IMAGES_MAGIC, LABELS_MAGIC, write_idx
from handgrad.errors import HandgradError

N_TRAIN, N_TEST = 60, 20  # 1/6 of train (10 rows) becomes valid


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(N_TEST) * 3 % 10).astype(np.uint8),
    }


def write_idx_set(folder: Path, a: dict[str, np.ndarray], suffix: str = ".gz") -> Path:
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", a["x_train"])
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", a["y_train"])
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", a["x_test"])
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", a["y_test"])
    return folder


def lesson_splits(a: dict[str, np.ndarray]) -> tuple:
    """The lesson's layout: float32 pixels in [0, 1], int64 labels, 3 (x, y) pairs."""
    x = a["x_train"].reshape(N_TRAIN, 784).astype(np.float32) / 255
    y = a["y_train"].astype(np.int64)
    xt = a["x_test"].reshape(N_TEST, 784).astype(np.float32) / 255
    return ((x[:50], y[:50]), (x[50:], y[50:]), (xt, a["y_test"].astype(np.int64)))


def write_pickle(path: Path, obj: object, protocol: int = 4) -> Path:
    blob = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


def assert_matches(ds, a: dict[str, np.ndarray]) -> None:
    """train/valid are the first 50 / last 10 training rows, test the t10k rows, exactly."""
    x = torch.from_numpy(a["x_train"].reshape(N_TRAIN, 784).astype(np.float32) / 255)
    y = torch.from_numpy(a["y_train"].astype(np.int64))
    assert torch.equal(ds.train.x, x[:50]) and torch.equal(ds.train.y, y[:50])
    assert torch.equal(ds.valid.x, x[50:]) and torch.equal(ds.valid.y, y[50:])
    assert ds.test is not None
    xt = torch.from_numpy(a["x_test"].reshape(N_TEST, 784).astype(np.float32) / 255)
    assert torch.equal(ds.test.x, xt)
    assert torch.equal(ds.test.y, torch.from_numpy(a["y_test"].astype(np.int64)))
    for s in ds.splits().values():
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
    assert ds.image_shape == (1, 28, 28) and ds.classes == [str(d) for d in range(10)]


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_folder_round_trips(tmp_path, arrays, suffix):
    ds = load_dataset(write_idx_set(tmp_path / "idx", arrays, suffix))
    assert_matches(ds, arrays)
    assert ds.source == str(tmp_path / "idx")


def test_idx_file_path_loads_its_folder(tmp_path, arrays):
    write_idx_set(tmp_path, arrays)
    assert_matches(load_dataset(tmp_path / "t10k-labels-idx1-ubyte.gz"), arrays)


def test_idx_with_dotted_names_as_unpacked_by_some_tools(tmp_path, arrays):
    write_idx(tmp_path / "train-images.idx3-ubyte", arrays["x_train"])
    write_idx(tmp_path / "train-labels.idx1-ubyte", arrays["y_train"])
    ds = load_dataset(tmp_path)
    assert ds.test is None and len(ds.train) == 50 and len(ds.valid) == 10


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_lesson_pickle_round_trips(tmp_path, arrays, protocol):
    ds = load_dataset(write_pickle(tmp_path / "mnist.pkl.gz", lesson_splits(arrays), protocol))
    assert_matches(ds, arrays)


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` opcode (bytes that Python 3 decodes with the given encoding)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _py2_array(a: np.ndarray) -> bytes:
    """The opcodes Python 2's cPickle wrote for a numpy array (protocol 2), as in the lesson's
    mnist.pkl.gz: the array's bytes are a py2 ``str``, which needs ``encoding="latin1"``."""
    order = b"<" if a.dtype.itemsize > 1 else b"|"
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(a.dtype.str[1:].encode()) + _py2_int(0) + _py2_int(1)
        + b"\x87R(" + _py2_int(3) + _py2_str(order) + b"NNN" + _py2_int(-1) + _py2_int(-1)
        + _py2_int(0) + b"tb"
    )  # fmt: skip
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
        + _py2_str(b"b") + b"\x87R(" + _py2_int(1) + shape + dtype + b"\x89"
        + _py2_str(a.tobytes()) + b"tb"
    )  # fmt: skip


def test_python2_pickle_round_trips(tmp_path, arrays):
    pairs = [_py2_array(x) + _py2_array(y) + b"\x86" for x, y in lesson_splits(arrays)]
    blob = b"\x80\x02" + b"".join(pairs) + b"\x87."
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)  # the file really is Python 2's: plain loads cannot read it
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(blob))
    assert_matches(load_dataset(path), arrays)


def test_npz_round_trips_with_valid_carved(tmp_path, arrays):
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    assert_matches(load_dataset(tmp_path / "mnist.npz"), arrays)


def test_npz_keeps_its_own_valid_split(tmp_path, arrays):
    a = dict(arrays, x_valid=arrays["x_test"][:5], y_valid=arrays["y_test"][:5])
    np.savez(tmp_path / "d.npz", **a)
    ds = load_dataset(tmp_path / "d.npz")
    assert len(ds.train) == N_TRAIN and len(ds.valid) == 5


@pytest.mark.parametrize(
    ("layout", "expected_source"),
    [
        ("idx", "{d}"),
        ("torchvision", "{d}/MNIST/raw"),
        ("pickle", "{d}/mnist.pkl.gz"),
        ("npz", "{d}/mnist.npz"),
    ],
)
def test_folder_is_detected(tmp_path, arrays, layout, expected_source):
    d = tmp_path / "somewhere"
    d.mkdir()
    if layout == "idx":
        write_idx_set(d, arrays)
    elif layout == "torchvision":
        write_idx_set(d / "MNIST" / "raw", arrays, suffix="")
    elif layout == "pickle":
        write_pickle(d / "mnist.pkl.gz", lesson_splits(arrays))
    else:
        np.savez(d / "mnist.npz", **arrays)
    (d / "README.txt").write_text("not data")
    ds = load_dataset(d)
    assert_matches(ds, arrays)
    assert ds.source == expected_source.format(d=d)


def test_fashion_in_the_path_gives_fashion_class_names(tmp_path, arrays):
    ds = load_dataset(write_idx_set(tmp_path / "fashion", arrays))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


# --------------------------------------------------------------------------------- safety
class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pkl", ".pkl.gz"])
def test_malicious_pickle_is_refused_without_running(tmp_path, arrays, suffix):
    marker = tmp_path / "pwned"
    (x, y), valid, test = lesson_splits(arrays)
    path = write_pickle(tmp_path / f"evil{suffix}", ((x, y), valid, (test[0], RunsShell(marker))))
    with pytest.raises(
        HandgradError, match=r"refused: the pickle asks to call (posix|os|nt)\.system"
    ):
        load_dataset(path)
    assert not marker.exists()
    # The payload is real: plain pickle would have run it.
    pickle.loads(pickle.dumps(RunsShell(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_pickle_of_other_objects_is_refused(tmp_path):
    path = write_pickle(tmp_path / "d.pkl", {"a": __import__("collections").OrderedDict()})
    with pytest.raises(HandgradError, match=r"collections\.OrderedDict"):
        load_dataset(path)


def test_npz_with_pickled_objects_is_refused(tmp_path, arrays):
    a = dict(arrays, y_train=np.array([object()] * N_TRAIN, dtype=object))
    np.savez(tmp_path / "d.npz", **a)
    with pytest.raises(HandgradError, match="refused: an array in it is stored as pickled"):
        load_dataset(tmp_path / "d.npz")


# ------------------------------------------------------------------------------ bad files
def _idx_bytes(magic: int, shape: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic, *shape) + body


def corrupt(case: str, d: Path, a: dict[str, np.ndarray]) -> Path:
    """Write a folder of IDX files with one defect; return the file the error must name."""
    write_idx_set(d, a)
    images, labels = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    if case == "truncated gz":
        images.write_bytes(images.read_bytes()[:-200])
        return images
    if case == "empty":
        labels.write_bytes(b"")
        return labels
    if case == "wrong magic":
        images.write_bytes(
            gzip.compress(_idx_bytes(0x12345678, (N_TRAIN, 28, 28), bytes(N_TRAIN * 784)))
        )
        return images
    if case == "wrong dtype":
        images.write_bytes(
            gzip.compress(_idx_bytes(0x00000D03, (N_TRAIN, 28, 28), bytes(N_TRAIN * 784)))
        )
        return images
    if case == "swapped":
        images.write_bytes(labels.read_bytes())
        return images
    if case == "short body":
        images.write_bytes(
            gzip.compress(_idx_bytes(IMAGES_MAGIC, (N_TRAIN, 28, 28), bytes(784 * 7)))
        )
        return images
    if case == "trailing bytes":
        labels.write_bytes(gzip.compress(_idx_bytes(LABELS_MAGIC, (N_TRAIN,), bytes(N_TRAIN + 3))))
        return labels
    if case == "mismatched counts":
        write_idx(labels, a["y_train"][:-1])
        return labels
    if case == "labels out of range":
        write_idx(labels, np.full(N_TRAIN, 10, dtype=np.uint8))
        return labels  # the labels file is the one at fault, not the images
    if case == "missing pair":
        labels.unlink()
        return d
    raise AssertionError(case)


ERRORS = {
    "truncated gz": "the gzip stream is truncated",
    "empty": r"the file is empty \(0 bytes\)",
    "wrong magic": "wrong magic number 0x12345678",
    "wrong dtype": r"IDX data type 0x0D \(float32\)",
    "swapped": r"holds labels \(magic 0x00000801\) where images \(0x00000803\) were expected",
    "short body": "truncated: the header promises 60 images",
    "trailing bytes": "3 bytes follow the 60 labels",
    "mismatched counts": "mismatched counts: 59 labels for the 60 images",
    "labels out of range": r"labels range over \[10, 10\], outside the 10 classes 0\.\.9",
    "missing pair": "found train-images-idx3-ubyte.gz but no train-labels-idx1-ubyte",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_each_bad_idx_file_has_its_own_error(tmp_path, arrays, case):
    named = corrupt(case, tmp_path, arrays)
    with pytest.raises(HandgradError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(named)), message
    assert re.search(ERRORS[case], message), message
    others = [re.search(p, message) for c, p in ERRORS.items() if c != case]
    assert not any(others), f"{case}: message also matches another case: {message}"


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: p.write_bytes(b""), r"\.pkl\.gz: the file is empty"),
        (
            lambda p: p.write_bytes(gzip.compress(pickle.dumps((1, 2)))[:-12]),
            "gzip stream is truncated",
        ),
        (
            lambda p: p.write_bytes(gzip.compress(pickle.dumps({"x": 1}))),
            "holds a dict, not the lesson's splits",
        ),
        (
            lambda p: p.write_bytes(gzip.compress(pickle.dumps(list(range(9)))[:5])),
            "pickle data is truncated",
        ),
    ],
    ids=["empty", "truncated gz", "wrong structure", "truncated pickle"],
)
def test_bad_pickles(tmp_path, make, pattern):
    path = tmp_path / "mnist.pkl.gz"
    make(path)
    with pytest.raises(HandgradError, match=pattern):
        load_dataset(path)


def test_lesson_pickle_with_out_of_range_labels_names_the_split(tmp_path, arrays):
    (x, y), valid, test = lesson_splits(arrays)
    path = write_pickle(tmp_path / "m.pkl", ((x, y), (valid[0], valid[1] - 1), test))
    with pytest.raises(HandgradError, match=r"m\.pkl \(valid split\): labels range over \[-1, 8\]"):
        load_dataset(path)


def test_float_pixels_outside_unit_range_are_refused(tmp_path, arrays):
    (x, y), valid, test = lesson_splits(arrays)
    path = write_pickle(tmp_path / "m.pkl", ((x * 255, y), valid, test))
    with pytest.raises(
        HandgradError, match=r"float pixels range over \[0, 255\], expected \[0, 1\]"
    ):
        load_dataset(path)


def test_nan_pixels_are_refused(tmp_path, arrays):
    (x, y), valid, test = lesson_splits(arrays)
    x = x.copy()
    x[3, 5] = np.nan
    with pytest.raises(HandgradError, match="NaN or infinity"):
        load_dataset(write_pickle(tmp_path / "m.pkl", ((x, y), valid, test)))


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p, a=None: p.write_bytes(b"PK\x03\x04garbage"), "truncated or damaged"),
        (lambda p: p.write_bytes(b"not a zip"), "not a .npz archive"),
        (
            lambda p: np.savez(p, x_train=np.zeros((3, 28, 28), np.uint8)),
            r"no y_train in the archive \(it holds x_train\)",
        ),
    ],
    ids=["empty", "damaged zip", "not zip", "missing key"],
)
def test_bad_npz(tmp_path, make, pattern):
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(HandgradError, match=pattern):
        load_dataset(path)


def test_truncated_npz_is_reported(tmp_path, arrays):
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    blob = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(HandgradError, match="truncated or damaged"):
        load_dataset(tmp_path / "d.npz")


def test_missing_path_and_unknown_format_and_empty_folder(tmp_path):
    with pytest.raises(HandgradError, match="no such file or folder; give a dataset name"):
        load_dataset(tmp_path / "nope.pkl.gz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(HandgradError, match="unknown format"):
        load_dataset(tmp_path / "d.csv")
    with pytest.raises(HandgradError, match="no dataset files in this folder"):
        load_dataset(tmp_path)


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros((2, 3), dtype=np.float32))
