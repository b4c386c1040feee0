"""IDX files, the format of LeCun's MNIST and Zalando's Fashion-MNIST (gzipped or raw).

Layout (big-endian): a 4-byte magic number ``00 00 <type> <rank>``, then ``rank`` 4-byte sizes,
then the values in row-major order. MNIST-family files hold unsigned bytes (type 0x08): images
are rank 3 (count, rows, cols), labels rank 1 (count).
"""

from __future__ import annotations

import gzip
import math
import re
import struct
from pathlib import Path

import numpy as np

from handgrad._io import write_bytes
from handgrad.data.formats.files import bad_file, folder_errors, read_bytes

UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST-family files use
IMAGES_MAGIC = 0x00000803  # 00 00, type 0x08 (ubyte), rank 3: (count, rows, cols)
LABELS_MAGIC = 0x00000801  # 00 00, type 0x08 (ubyte), rank 1: (count,)
HEADER = struct.Struct(">I")  # one big-endian uint32
#: Every IDX type code, for messages about a file holding something other than bytes.
TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}  # fmt: skip
#: ``train-images-idx3-ubyte``, ``t10k-labels.idx1-ubyte.gz`` ... -> (split, kind)
FILE_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")
FIX = "the file is not an MNIST-family IDX file or is damaged: fetch it again"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file whose magic number must be ``magic`` (:data:`IMAGES_MAGIC` or
    :data:`LABELS_MAGIC`); returns uint8 (count, rows, cols) or (count,)."""
    data = read_bytes(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    rank = magic & 0xFF
    if len(data) < HEADER.size:
        raise bad_file(path, f"only {len(data)} bytes, too short for an IDX header", FIX)
    (found,) = HEADER.unpack_from(data, 0)
    if found >> 16 != 0:
        raise bad_file(
            path,
            f"wrong magic number 0x{found:08X} (an IDX file starts with 00 00; expected "
            f"0x{magic:08X} for {kind})",
            FIX,
        )
    type_code, found_rank = (found >> 8) & 0xFF, found & 0xFF
    if type_code != UBYTE:
        name = TYPE_NAMES.get(type_code, "an unknown type")
        raise bad_file(
            path,
            f"IDX data type 0x{type_code:02X} ({name}); MNIST-family {kind} are unsigned "
            f"bytes (0x{UBYTE:02X})",
            FIX,
        )
    if found_rank != rank:
        other = {3: "images", 1: "labels"}.get(found_rank, f"rank-{found_rank} data")
        raise bad_file(
            path,
            f"holds {other} (magic 0x{found:08X}) where {kind} (0x{magic:08X}) were expected",
            "check that the images and labels files are not swapped",
        )
    header_end = HEADER.size * (1 + rank)
    if len(data) < header_end:
        raise bad_file(path, "the IDX header is cut short", FIX)
    shape = struct.unpack_from(f">{rank}I", data, HEADER.size)
    if kind == "images" and (shape[1] == 0 or shape[2] == 0):
        raise bad_file(path, f"images of size {shape[1]}x{shape[2]}", FIX)
    expected = math.prod(shape)  # Python ints: a hostile header cannot overflow it
    body = len(data) - header_end
    if body < expected:
        raise bad_file(
            path,
            f"truncated: the header promises {shape[0]:,} {kind} ({expected:,} bytes) but only "
            f"{body:,} bytes follow",
            "the file was cut short: delete it and fetch it again",
        )
    if body > expected:
        raise bad_file(
            path,
            f"{body - expected:,} bytes follow the {shape[0]:,} {kind} its header announces",
            FIX,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, rows, cols) and labels (N,), their counts checked against each other."""
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if len(x) != len(y):
        raise bad_file(
            labels,
            f"mismatched counts: {len(y):,} labels for the {len(x):,} images of {images.name}",
            "the two files come from different sets or one is damaged: fetch both again",
        )
    return x, y


def write_idx(path: Path, values: np.ndarray) -> Path:
    """Write uint8 images (N, rows, cols) or labels (N,) as IDX (gzipped if the name ends in
    ``.gz``), through a temporary file and a rename. The inverse of :func:`read_idx`."""
    values = np.ascontiguousarray(values)
    if values.dtype != np.uint8 or values.ndim not in (1, 3):
        raise ValueError(
            f"write_idx needs uint8 (N,) or (N, H, W), got {values.dtype} {values.shape}"
        )
    magic = IMAGES_MAGIC if values.ndim == 3 else LABELS_MAGIC
    blob = struct.pack(f">I{values.ndim}I", magic, *values.shape) + values.tobytes()
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    return write_bytes(path, blob, suffix=".part")


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """IDX files in ``folder`` by (split, kind), e.g. ``("train", "images")``; a raw file is
    preferred over its ``.gz`` (no decompression)."""
    found: dict[tuple[str, str], Path] = {}
    with folder_errors(folder):
        for entry in sorted(folder.iterdir(), key=lambda p: p.name.endswith(".gz")):
            m = FILE_NAME.match(entry.name)
            if m and entry.is_file():
                found.setdefault((m.group(1), m.group(2)), entry)
    return found
