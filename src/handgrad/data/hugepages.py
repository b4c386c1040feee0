"""Host tensors in 2 MiB pages, for data that is read one random row at a time.

A shuffled epoch reads rows in random order. With the usual 4 KiB pages every row of a large
split lives on a different page, so nearly every row costs a TLB miss and a page-table walk
on top of the memory read itself; the TLB covers only a few MiB with 4 KiB pages. With
transparent huge pages (2 MiB) MNIST's 157 MB training split spans 75 pages, which the TLB
holds whole. ``benchmarks/bench_dataloader.py`` measures what that buys per epoch.

Linux only: memory comes from an anonymous ``mmap`` marked ``MADV_HUGEPAGE``, which the kernel
backs with huge pages when transparent huge pages are enabled (``always`` or ``madvise`` in
``/sys/kernel/mm/transparent_hugepage/enabled``). Elsewhere :func:`empty` returns ``None`` and
callers keep ordinary memory; either way the values are the same.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import torch
from torch import Tensor

#: The huge page size on x86-64 and most arm64 kernels.
HUGE_PAGE = 2 * 1024 * 1024
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def available() -> bool:
    """Whether the kernel gives huge pages to memory marked ``MADV_HUGEPAGE``."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = _THP_MODE.read_text()  # e.g. "always [madvise] never"
    except OSError:
        return False
    return "[never]" not in mode


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
    """An uninitialized CPU tensor whose memory is in huge pages, or ``None`` where the
    platform cannot give them (the caller then allocates as usual).

    The tensor owns its mapping (freed with the last reference to the tensor's storage).
    """
    if not available():
        return None
    count = torch.Size(shape).numel()
    nbytes = count * dtype.itemsize
    if nbytes == 0:
        return None
    # One extra huge page so that the data can start on a 2 MiB boundary: the kernel only
    # maps whole, aligned 2 MiB ranges with a huge page.
    # Private: a shared anonymous mapping is shmem, whose huge pages follow another setting.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    region.madvise(mmap.MADV_HUGEPAGE)
    address = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
    offset = -address % HUGE_PAGE
    flat = torch.frombuffer(region, dtype=dtype, count=count, offset=offset)  # keeps region alive
    return flat.view(shape)
