"""The lesson's ``mnist.pkl.gz``, read with an unpickler that can only rebuild numpy arrays.

A pickle is a program: unpickling calls whatever functions the file names (``os.system``
included). :class:`ArrayUnpickler` allows only the handful of numpy functions that rebuild an
array, its dtype or a numpy scalar, under both their numpy 2 (``numpy._core``) and numpy 1
(``numpy.core``) module names. Any other name is refused before anything is called. Python 2
pickles (the lesson's file was written by Python 2) are read with ``encoding="latin1"``, which
turns their byte strings back into the arrays' raw bytes.

The allowed functions still allocate what they are told: ``numpy.ndarray((60000, 60000))`` is a
few bytes of pickle. So each call, and each array's ``__setstate__`` (which copies the bytes it
is given), is charged against a budget of :data:`BUDGET_FACTOR` times the pickle's own size,
before it allocates; a file asking for more is refused.
"""

from __future__ import annotations

import importlib
import io
import math
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


#: A genuine pickle builds each array once from bytes it holds (twice counted: the bytes, then
#: the array): arrays may total this many times the pickle's size.
BUDGET_FACTOR = 4
LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class ObjectArray(pickle.UnpicklingError):
    """The pickle asks for an array of Python objects."""


class TooLarge(pickle.UnpicklingError):
    """The pickle asks for more bytes of arrays than its budget."""

    def __init__(self, asked: int) -> None:
        super().__init__(f"asks for {asked:,} bytes")
        self.asked = asked


class Budget:
    """Bytes the pickle may still have allocated; :meth:`charge` refuses before allocating."""

    def __init__(self, nbytes: int) -> None:
        self.left, self.spent = nbytes, 0

    def charge(self, nbytes: int) -> None:
        self.spent += nbytes
        if nbytes > self.left:
            raise TooLarge(self.spent)
        self.left -= nbytes


def claimed_bytes(shape: Any, dtype: Any) -> int:
    """The bytes an array of ``shape`` and ``dtype`` needs (exact: Python ints); object arrays,
    which would hold arbitrary Python objects, are refused."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ObjectArray(str(dt))
    return math.prod(dims) * dt.itemsize


class Array(np.ndarray):
    """The class arrays are unpickled as, so that their ``__setstate__`` is charged too; every
    array :func:`load_pickle` returns is turned back into a plain ``numpy.ndarray``."""

    budget: Budget | None = None

    def __setstate__(self, state: Any) -> None:
        if self.budget is None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array state handgrad does not read")
        shape, dtype = state[-4], state[-3]
        self.budget.charge(claimed_bytes(shape, dtype))
        super().__setstate__(state)


class ArrayUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`, each allocation charged
    against a :class:`Budget` of ``budget`` bytes."""

    def __init__(self, file: io.BytesIO, budget: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = Budget(budget)
        self.guarded = {
            "ndarray": self.ndarray,
            "_reconstruct": self.reconstruct,
            "_frombuffer": self.frombuffer,
            "scalar": self.scalar,
            "encode": self.encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(module, name)
        found = self.guarded.get(name)
        return found if found is not None else _resolve(module, name)

    def adopt(self, array: np.ndarray) -> Array:
        out = array.view(Array)
        out.budget = self.budget
        return out

    def ndarray(self, shape: Any, dtype: Any = float) -> Array:
        self.budget.charge(claimed_bytes(shape, dtype))
        return self.adopt(np.ndarray(shape, dtype))

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Array:
        if subtype != self.ndarray:  # the guarded numpy.ndarray that find_class gave
            raise pickle.UnpicklingError("_reconstruct of something other than an array")
        self.budget.charge(claimed_bytes(shape, dtype))
        return self.adopt(
            _resolve("numpy._core.multiarray", "_reconstruct")(np.ndarray, shape, dtype)
        )

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: str) -> Array:
        self.budget.charge(claimed_bytes(shape, dtype))
        return self.adopt(
            _resolve("numpy._core.numeric", "_frombuffer")(buffer, dtype, shape, order)
        )

    def scalar(self, dtype: Any, *args: Any) -> Any:
        self.budget.charge(claimed_bytes((), dtype))
        return _resolve("numpy._core.multiarray", "scalar")(dtype, *args)

    def encode(self, text: Any, encoding: str = "utf-8", *args: Any) -> Any:
        per_char = 1 if str(encoding).lower() in LATIN1 else 4
        self.budget.charge(per_char * len(text))
        return _resolve("_codecs", "encode")(text, encoding, *args)


def _resolve(module: str, name: str) -> Any:
    """The function ``module.name``, for numpy's modules under either of their names."""
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


def _plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` with its unpickled arrays (in tuples and lists, a few levels deep) as plain
    ``numpy.ndarray`` views."""
    if isinstance(obj, Array):
        return obj.view(np.ndarray)
    if isinstance(obj, tuple | list) and depth < 4:
        return type(obj)(_plain(item, depth + 1) for item in obj)
    return obj


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` (gzipped or not) allowing numpy arrays only, of at most
    :data:`BUDGET_FACTOR` times the pickle's size in all."""
    data = read_bytes(path)
    try:
        unpickler = ArrayUnpickler(io.BytesIO(data), BUDGET_FACTOR * len(data), encoding="latin1")
        return _plain(unpickler.load())
    except TooLarge as exc:
        raise bad_file(
            path,
            f"refused: the pickle asks for {exc.asked:,} bytes of arrays but holds only "
            f"{len(data):,} bytes",
            "the file is damaged or forged: use a file from a trusted source",
        ) from None
    except ObjectArray:
        raise bad_file(
            path,
            "refused: the pickle holds an array of Python objects (handgrad reads numeric "
            "arrays only)",
            "convert the data to numeric arrays (.npz or IDX)",
        ) from None
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
