"""NumPy ``.npz`` archives (Keras' ``mnist.npz`` layout), read with ``allow_pickle=False``.

``numpy.load`` allocates what an array's header claims before reading its bytes, so each
member's header is first checked against the member's size, and that size against the cap and
against what its compressed bytes can possibly hold.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from handgrad.data.formats.files import bad_file, max_data, over_limit, read_bytes

REQUIRED = ("x_train", "y_train")
OPTIONAL = ("x_valid", "y_valid", "x_test", "y_test")
#: Deflate expands at most 1032-fold: a member claiming more per compressed byte is lying.
DEFLATE_RATIO = 1032


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` by name: ``x_train, y_train`` and any of ``x_valid, y_valid,
    x_test, y_test``. Object arrays (which would need pickle) are refused."""
    data = read_bytes(path)
    if not data.startswith(b"PK"):
        raise bad_file(
            path,
            "not a .npz archive (it does not start like a zip file)",
            "give an .npz written by numpy.savez with x_train, y_train, x_test, y_test",
        )
    try:
        check_claims(path, data)
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = set(archive.files)
            missing = [k for k in REQUIRED if k not in names]
            if missing:
                raise bad_file(
                    path,
                    f"no {', '.join(missing)} in the archive (it holds {', '.join(sorted(names))})",
                    "save the arrays as x_train, y_train, x_test, y_test (x_valid, y_valid "
                    "optional)",
                )
            return {k: archive[k] for k in (*REQUIRED, *OPTIONAL) if k in names}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise bad_file(
                path,
                "refused: an array in it is stored as pickled Python objects",
                "save plain numeric arrays (numpy.savez with uint8 or float32 arrays)",
            ) from None
        raise bad_file(path, f"a damaged array ({exc})", "fetch or write the file again") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise bad_file(
            path, f"the .npz (zip) archive is truncated or damaged ({exc})", "fetch it again"
        ) from None


def check_claims(path: Path, data: bytes) -> None:
    """Refuse, before numpy allocates it, an array whose header claims more bytes than its
    member holds, or a member bigger than the cap or than its compressed bytes can hold."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        for key in (*REQUIRED, *OPTIONAL):
            if f"{key}.npy" not in names:
                continue
            info = archive.getinfo(f"{key}.npy")
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_RATIO
            room = min(info.compress_size, len(data)) * ratio
            if info.file_size > room:
                raise bad_file(
                    path,
                    f"{key} claims {info.file_size:,} bytes, more than its "
                    f"{info.compress_size:,} compressed bytes can hold",
                    "the archive is damaged or forged: fetch it again",
                )
            if info.file_size > max_data():
                raise over_limit(path, f"{key} holds {info.file_size:,} bytes")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(member)
                room = info.file_size - member.tell()
            if dtype.hasobject:
                continue  # numpy.load refuses it (pickled), with its own message
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > room:
                raise bad_file(
                    path,
                    f"the header of {key} claims shape {shape} ({claimed:,} bytes) but only "
                    f"{room:,} bytes follow it",
                    "the archive is damaged or forged: fetch it again",
                )
