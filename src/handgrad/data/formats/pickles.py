"""The lesson's ``mnist.pkl.gz``, read with an unpickler that can only rebuild numpy arrays.

A pickle is a program: unpickling calls whatever functions the file names (``os.system``
included). :class:`ArrayUnpickler` allows only the handful of numpy functions that rebuild an
array, its dtype or a numpy scalar, under both their numpy 2 (``numpy._core``) and numpy 1
(``numpy.core``) module names. Any other name is refused before anything is called. Python 2
pickles (the lesson's file was written by Python 2) are read with ``encoding="latin1"``, which
turns their byte strings back into the arrays' raw bytes.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from handgrad.data.formats.files import bad_file, read_bytes

#: (module, name) pairs a pickle may name. Each only builds arrays, dtypes or numpy scalars.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),  # ndarray.__reduce__, protocols 0-4
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),  # numpy scalars (np.int64(3))
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5 out-of-band arrays
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (array data)
    }
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class ArrayUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(module, name)
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            # numpy 2 moved numpy.core to numpy._core (the old name warns); numpy 1 lacks it.
            tail = module.split(".", 2)[2]
            for prefix in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{prefix}.{tail}"), name)
                except (ImportError, AttributeError):
                    continue
            raise pickle.UnpicklingError(f"numpy has no {module}.{name}")
        return getattr(importlib.import_module(module), name)


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` (gzipped or not) allowing numpy arrays only."""
    data = read_bytes(path)
    try:
        return ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as exc:
        raise bad_file(
            path,
            f"refused: the pickle asks to call {exc.qualname}, and unpickling it would run "
            "that code (handgrad only rebuilds numpy arrays from a pickle)",
            "use a file from a trusted source, or convert it to .npz or IDX",
        ) from None
    except EOFError:
        raise bad_file(path, "the pickle data is truncated", "fetch the file again") from None
    except pickle.UnpicklingError as exc:
        problem = "the pickle data is truncated" if "truncated" in str(exc) else f"corrupt ({exc})"
        raise bad_file(path, problem, "fetch the file again") from None
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise bad_file(
            path, f"not a readable pickle ({type(exc).__name__}: {exc})", "fetch the file again"
        ) from None


def lesson_parts(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`` of the lesson's file
    (the test pair may be absent), as (split name, x, y)."""
    obj = load_pickle(path)
    expected = (
        "expected ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) as in mnist.pkl.gz"
    )
    if not isinstance(obj, tuple | list) or len(obj) not in (2, 3):
        raise bad_file(path, f"holds a {type(obj).__name__}, not the lesson's splits", expected)
    parts = []
    for name, pair in zip(("train", "valid", "test"), obj, strict=False):
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(a, np.ndarray) for a in pair)
        ):
            raise bad_file(path, f"its {name} part is not a pair of numpy arrays", expected)
        parts.append((name, pair[0], pair[1]))
    return parts
