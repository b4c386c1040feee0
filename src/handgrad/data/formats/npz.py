"""NumPy ``.npz`` archives (Keras' ``mnist.npz`` layout), read with ``allow_pickle=False``."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from handgrad.data.formats.files import bad_file, read_bytes

REQUIRED = ("x_train", "y_train")
OPTIONAL = ("x_valid", "y_valid", "x_test", "y_test")


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
