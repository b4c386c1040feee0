"""Files that claim more than they hold: each is refused with one line, fast and small.

Every file here is generated (a few hundred bytes to a few KB) and claims gigabytes: through a
pickle's allowed numpy calls, an ``.npy`` header inside an ``.npz``, a zip member's size, a gzip
stream, an IDX header. Each must be refused with one :class:`HandgradError` line in well under
a second and under 100 MB of allocations (tracemalloc sees numpy's and Python's).
"""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from handgrad.data import load_dataset
from handgrad.data.formats.files import MAX_DATA_ENV, read_bytes
from handgrad.data.formats.idx import IMAGES_MAGIC, LABELS_MAGIC

MB = 1 << 20


def refused(path: Path, pattern: str) -> str:
    """Load ``path``; assert one HandgradError line matching ``pattern``, in under half a
    second, with under 100 MB allocated at the peak. Returns the message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(Exception) as info:
            load_dataset(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert info.type.__name__ == "HandgradError", f"{info.type.__name__}: {message}"
    assert "\n" not in message and message.startswith(str(path)), message
    assert pattern in message, message
    assert seconds < 0.5, f"{seconds:.2f}s"
    assert peak < 100 * MB, f"{peak / MB:.0f} MB"
    return message


# ---------------------------------------------------------------------------------- pickles
def _pickle_int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


NDARRAY_CALL = (  # numpy.ndarray((60000, 60000)): 28.8 GB of float64
    b"\x80\x02cnumpy\nndarray\n" + _pickle_int(60000) + _pickle_int(60000) + b"\x86\x85R."
)
RECONSTRUCT = (  # numpy.core.multiarray._reconstruct(ndarray, (2**30, 16), "b"): 16 GB
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    + _pickle_int(2**30) + _pickle_int(16) + b"\x86U\x01b\x87R."
)  # fmt: skip


def memo_bomb(n_bytes: int = MB, copies: int = 200) -> bytes:
    """One memoised 1 MB byte string given to 200 arrays' ``__setstate__``; a byte-swapped
    dtype makes numpy copy it each time: 200 MB from a 1 KB gzip."""
    array = (
        b"h\x03h\x04K\x00\x85U\x01b\x87R"  # _reconstruct(ndarray, (0,), "b")
        + b"(K\x01" + _pickle_int(n_bytes // 8) + b"\x85h\x01\x89h\x02tb"  # BUILD its state
    )  # fmt: skip
    return (
        b"\x80\x02cnumpy\ndtype\nU\x03>f8\x85Rq\x01"
        + b"B" + struct.pack("<I", n_bytes) + bytes(n_bytes) + b"q\x02"
        + b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04](" + array * copies
        + b"e."
    )  # fmt: skip


@pytest.mark.parametrize(
    ("blob", "name"),
    [(NDARRAY_CALL, "ndarray call"), (RECONSTRUCT, "reconstruct"), (memo_bomb(), "memo")],
    ids=["ndarray-call", "reconstruct", "memoised-setstate"],
)
def test_pickle_asking_for_huge_arrays_is_refused(tmp_path, blob, name):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(blob))
    assert path.stat().st_size < 2000
    refused(path, "refused: the pickle asks for")


def test_pickle_with_object_arrays_is_refused(tmp_path):
    blob = b"\x80\x02cnumpy\nndarray\n" + _pickle_int(4) + b"\x85U\x01O\x86R."
    path = tmp_path / "m.pkl"
    path.write_bytes(blob)
    refused(path, "refused: the pickle holds an array of Python objects")


# ------------------------------------------------------------------------------------- npz
def _npy_header(shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return out.getvalue()


def test_npz_header_claiming_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key in ("x_train", "y_train"):
            z.writestr(f"{key}.npy", _npy_header((10**6, 10**6)) + bytes(16))
    assert path.stat().st_size < 600
    refused(path, "the header of x_train claims shape (1000000, 1000000)")


def test_npz_member_claiming_more_than_its_compressed_bytes_is_refused(tmp_path):
    """A zip member whose recorded size is 4 GB: deflate cannot expand 100 bytes that far."""
    member = _npy_header((4, 28, 28)) + bytes(4 * 784)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_train.npy", member)
        z.writestr("y_train.npy", _npy_header((4,)) + bytes(4))
    blob = bytearray(buffer.getvalue())
    central = blob.index(b"PK\x01\x02")  # x_train's central directory entry: its size field
    struct.pack_into("<I", blob, central + 24, 2**32 - 1)
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(blob))
    refused(path, "x_train claims 4,294,967,295 bytes, more than its")


# ------------------------------------------------------------------------------------ gzip
def test_gzip_stops_at_the_cap_without_decompressing_the_rest(tmp_path, monkeypatch):
    """40 MB of zeros in a 40 KB .gz, with the cap lowered to 1 MB: refused once 1 MB is out."""
    monkeypatch.setenv(MAX_DATA_ENV, str(MB))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(40 * MB), 1))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", LABELS_MAGIC, 0))
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="gzip data decompresses to more bytes") as info:
            read_bytes(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.type.__name__ == "HandgradError"
    assert peak < 8 * MB, f"{peak / MB:.1f} MB"  # never the 40 MB it would decompress to
    message = refused(tmp_path, "over the limit of 1,048,576 bytes for one data file")
    assert f"raise the limit (e.g. {MAX_DATA_ENV}=4e+06)" in message


def test_raising_the_cap_lets_the_file_through(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_DATA_ENV, "1e3")
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes(2000)))
    with pytest.raises(Exception, match="over the limit of 1,000 bytes"):
        read_bytes(path)
    monkeypatch.setenv(MAX_DATA_ENV, "4_000")
    assert read_bytes(path) == bytes(2000)


def test_a_raw_file_over_the_cap_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_DATA_ENV, "100")
    path = tmp_path / "d.npz"
    path.write_bytes(bytes(1000))
    refused(path, "the file holds 1,000 bytes, over the limit of 100 bytes")


@pytest.mark.parametrize("value", ["lots", "0", "-5", "inf"])
def test_a_bad_cap_is_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv(MAX_DATA_ENV, value)
    (tmp_path / "x").write_bytes(b"abc")
    with pytest.raises(Exception, match=f"{MAX_DATA_ENV}='{value}': not a number of bytes"):
        read_bytes(tmp_path / "x")


# ------------------------------------------------------------------------------------- IDX
def test_idx_header_whose_shape_product_overflows_is_refused(tmp_path):
    """2**31 * 2**31 * 4 = 2**64: in int64 the product wraps to 0, matching an empty body."""
    header = struct.pack(">IIII", IMAGES_MAGIC, 2**31, 2**31, 4)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", LABELS_MAGIC, 1) + b"\0")
    message = refused(tmp_path / "train-images-idx3-ubyte", "truncated: the header promises")
    assert "18,446,744,073,709,551,616 bytes" in message
