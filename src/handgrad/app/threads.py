"""How many CPU threads a run uses: a number the user pins, or ``auto`` from the load average.

OpenMP threads spin-wait at the end of every parallel operation, so on a busy machine extra
threads wait on each other instead of helping; ``auto`` therefore counts only the cores the load
average leaves free. The measurements behind this are in ``benchmarks/RESULTS.md`` ("Why
``--threads auto``"); results do not depend on the thread count, only the time does.
"""

from __future__ import annotations

import os

import torch

from handgrad.errors import HandgradError


def resolve_threads(threads: str, device: torch.device) -> int:
    """CPU threads for the run: a positive number, or ``auto``.

    ``auto`` keeps torch's default (every core, or ``OMP_NUM_THREADS``) on an idle machine, on a
    non-CPU device, or where the load average is unknown; otherwise it takes the cores that the
    load average says are free (at least one).
    """
    if threads != "auto":
        try:
            n = int(threads)
        except ValueError:
            n = 0
        if n < 1:
            raise HandgradError(f"--threads {threads!r}: give a positive number or auto")
        return n
    cores = torch.get_num_threads()
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return cores
    free = cores - os.getloadavg()[0]
    return max(1, min(cores, round(free)))
