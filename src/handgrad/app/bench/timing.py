"""Time and work: every variant of a workload is warmed up once, then the variants take turns
in a rotating order for a number of rounds (the table shows medians); on a GPU each interval
starts and ends with ``torch.cuda.synchronize()``, so it covers the kernels a run queued. The
useful work is counted by ``FlopCounterMode``, and compared with the GEMM peak measured here."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from handgrad.app.bench.config import Config
from handgrad.app.bench.jobs import Job
from handgrad.app.bench.workloads import Workload


def make_sync(device: torch.device) -> Callable[[], None]:
    """What brackets every timed interval: ``torch.cuda.synchronize`` on a GPU (a time must
    cover the kernels a run queued, not only their launch), nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_workload(
    w: Workload,
    progress: Callable[[str], None],
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Times of every variant's ``run``, ``w.repeats`` rounds in rotating order; ``sync``
    (see :func:`make_sync`) is called just before each start and each stop."""
    jobs = {v.label: v.make() for v in w.variants}
    for label, job in jobs.items():
        if w.warmup:  # on a GPU this also pays for cuBLAS/cuDNN handles and kernel loading
            progress(f"{w.key} warm-up: {label}")
            job.run()
    times: dict[str, list[float]] = {label: [] for label in jobs}
    labels = list(jobs)
    for r in range(w.repeats):
        progress(f"{w.key} round {r + 1}/{w.repeats}")
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:  # rotate: nobody always runs first
            gc.collect()
            sync()
            t0 = clock()
            jobs[label].run()
            sync()
            times[label].append(clock() - t0)
    return times


def probe_with_flops(job: Job) -> tuple[dict[str, Tensor], float]:
    """``job.probe()`` and the matrix-product and convolution FLOPs it did (forward and
    backward), counted by ``FlopCounterMode``."""
    # deferred: only the bench's FLOP column needs it, and it is slow to import
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = job.probe()
    return out, float(counter.get_total_flops())


def gemm_peak(n: int, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """This machine's (or GPU's) single-precision GEMM rate in FLOP/s: the best of ``repeats``
    (n, n) @ (n, n) products on ``device`` (after one untimed call), each synchronised."""
    sync = make_sync(torch.device(device))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)  # drawn on the CPU: (n, n)
    b = torch.randn(n, n, generator=g).to(device)  # (n, n)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def gemm_size(cfg: Config) -> int:
    """The GEMM peak's matrix size: a GPU needs a far larger product than the CPU to be busy
    for long enough to time."""
    if cfg.torch_device.type == "cuda":
        return 4096 if cfg.quick or cfg.rows else 8192
    return 1024 if cfg.quick or cfg.rows else 2048
