"""The DataLoader's compiled row copy: ``out[j] = x[idx[j]]`` with streaming stores.

``rowcopy.c`` is one small C function. It is compiled with the system's C compiler on first
use (a fraction of a second; cached by :func:`handgrad._build.c_library`) and called through
:mod:`ctypes`, which lets go of the GIL while it runs. Where it cannot be built (no compiler,
``HANDGRAD_FAST=0``) or the tensors do not suit it, :func:`gather_rows` says so by returning
``False`` and the caller uses ``torch.index_select``: the rows are the same, bit for bit, only
slower.
"""

from __future__ import annotations

import ctypes
import math
import threading
from pathlib import Path

import torch
from torch import Tensor

from handgrad._build import Build, c_library

_SOURCE = Path(__file__).with_name("rowcopy.c")
#: Below this many bytes of x per thread, more threads cost more to start than they save.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024
#: With more torch threads than this, ``index_select`` is used: past 8 threads the streaming
#: stores of the row copy contend and it falls behind (benchmarks/RESULTS.md, DataLoader).
MAX_THREADS = 8


def _load() -> ctypes.CDLL:
    """Compile ``rowcopy.c`` unless this very build is cached, and load it."""
    lib = c_library(_SOURCE, ["-O2"])
    fn = lib.handgrad_scatter_rows
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    fn.restype = None
    return lib


#: The compiled library, built on first use (``build.get()``; ``None`` where it cannot be).
build = Build(_SOURCE, _load)


def status() -> tuple[bool, str]:
    """``(True, "")`` if the compiled row copy loads, else ``(False, reason)``."""
    return build.status()


def gather_rows(x: Tensor, idx: Tensor, out: Tensor) -> bool:
    """Write ``x[idx]`` into ``out`` (``(len(idx), *x.shape[1:])``), like
    ``torch.index_select(x, 0, idx, out=out)``, and return ``True``; or return ``False``
    without touching ``out`` where the compiled copy is unavailable, does not apply (not
    contiguous CPU tensors of one dtype, or ``idx`` naming a row twice), or would be slower:
    with more than ``MAX_THREADS`` torch threads. It uses as many threads as torch does
    (``index_select`` would), but none for less than ``PARALLEL_MIN_BYTES`` of ``x``.
    """
    threads = torch.get_num_threads()
    if threads > MAX_THREADS:
        return False
    return copy_rows(x, idx, out, max(1, min(threads, x.nbytes // PARALLEL_MIN_BYTES)))


def copy_rows(x: Tensor, idx: Tensor, out: Tensor, threads: int = 1) -> bool:
    """:func:`gather_rows` on ``threads`` threads (each taking a contiguous range of ``x``'s
    rows), whatever their number.

    It walks ``x`` in order and sends each chosen row to its place (see ``rowcopy.c``), so it
    first inverts the order: ``dest[i]`` = where row ``i`` goes, or -1.
    """
    if not (
        x.device.type == "cpu"
        and out.device.type == "cpu"
        and x.dtype == out.dtype
        and x.is_contiguous()
        and out.is_contiguous()
        and out.shape == (len(idx), *x.shape[1:])
    ):
        return False
    lib = build.get()
    if lib is None:
        return False
    dest = torch.full((len(x),), -1, dtype=torch.int64)  # (N,)
    dest[idx] = torch.arange(len(idx))  # dest[idx[j]] = j
    if int((dest >= 0).sum()) != len(idx):  # a repeated row: one of its places stays empty
        return False
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    bounds = [len(x) * k // threads for k in range(threads + 1)]

    def part(k: int) -> None:  # ctypes lets go of the GIL for the call: the parts run at once
        lo, hi = bounds[k], bounds[k + 1]
        lib.handgrad_scatter_rows(
            x.data_ptr() + lo * row_bytes, dest.data_ptr() + lo * 8, hi - lo, row_bytes,
            out.data_ptr(),
        )  # fmt: skip

    # Fresh threads each call (once an epoch): a pool kept for the process was no faster
    # (benchmarks/RESULTS.md), and fresh threads need no care across a fork.
    others = [threading.Thread(target=part, args=(k,)) for k in range(1, threads)]
    for t in others:
        t.start()
    part(0)
    for t in others:
        t.join()
    return True
