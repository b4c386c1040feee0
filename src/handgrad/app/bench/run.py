"""``run_bench``: every selected workload checked, timed, measured, and gathered into one
report (what the table, ``--json`` and ``--markdown`` show)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from handgrad.app.bench.config import Config
from handgrad.app.bench.gpu_memory import GPU_MEMORY_METHOD, CudaMemory, measure_device_memory
from handgrad.app.bench.guard import GUARD_RTOL, Guard, compare
from handgrad.app.bench.machine import exact_float32, machine_info
from handgrad.app.bench.memory import CPU_MEMORY_METHOD, measure_memory
from handgrad.app.bench.peers import peer_reference, prepare, subnormals
from handgrad.app.bench.targets import targets
from handgrad.app.bench.timing import (
    gemm_peak,
    gemm_size,
    make_sync,
    probe_with_flops,
    time_workload,
)
from handgrad.app.bench.workloads import Variant, Workload, build_workloads
from handgrad.errors import HandgradError
from handgrad.train.subnormals import subnormal_policy

Progress = Callable[[str], None]


@dataclass
class Row:
    label: str
    role: str
    times: list[float] = field(default_factory=list)
    median: float = math.nan
    speedup: float | None = None  # torch median / this median (None when refused)
    gflops: float | None = None
    peak_fraction: float | None = None
    peak_bytes: int | None = None
    guard: Guard | None = None
    baseline: str | None = None
    overhead: float | None = None  # this median / baseline's median - 1
    first_step: float | None = None  # a peer's first step, compilation included (seconds)


@dataclass
class Result:
    key: str
    title: str
    unit: str
    rows: int
    flops: float
    results: list[Row]


def run_bench(cfg: Config, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Run every selected workload; return everything the table and ``--json`` show. On a
    GPU, ``--clock cpu`` is refused: process CPU time does not see the GPU's work."""
    device = cfg.torch_device
    if device.type == "cuda" and cfg.clock == "cpu":
        raise HandgradError(
            "--clock cpu: process CPU time does not count GPU work; use --clock wall (the "
            "default) with --device cuda"
        )
    # --ftz: every torch thread flushes subnormals for the whole run (JAX's XLA does anyway)
    policy = "flush" if cfg.ftz else "keep"
    with exact_float32(device) as precision, subnormal_policy(policy, device):
        report = _run_bench(cfg, device, progress)
    report["machine"]["float32"] = precision
    return report


def _run_bench(cfg: Config, device: torch.device, progress: Progress) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    notes = prepare(cfg.peers, cfg.threads)
    started = time.time()
    progress(f"measuring the GEMM peak on {device}")
    peak = gemm_peak(gemm_size(cfg), device=device)
    progress("building workloads")
    workloads, skipped = build_workloads(cfg)
    results = [_run_workload(cfg, w, device, progress) for w in workloads]
    # The peak again at the end, the better of the two: a neighbour's burst during one
    # measurement would otherwise inflate every "of peak" figure.
    peak = max(peak, gemm_peak(gemm_size(cfg), device=device))
    for r in results:
        for row in r.results:
            if row.gflops is not None:
                row.peak_fraction = row.gflops * 1e9 / peak
    if cfg.memory:  # after all the timing
        _measure_peaks(cfg, device, workloads, results, progress)
    gpu = device.type == "cuda"
    return {
        "machine": machine_info(peak, device),
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "skipped": skipped,
        "subnormals": subnormals(cfg.peers, cfg.ftz),
        "notes": notes,
        "workloads": [asdict(r) for r in results],
        "targets": targets([asdict(r) for r in results], gpu=gpu),
        "guard_rtol": GUARD_RTOL,
        "memory_method": GPU_MEMORY_METHOD if gpu else CPU_MEMORY_METHOD,
    }


def _run_workload(cfg: Config, w: Workload, device: torch.device, progress: Progress) -> Result:
    """Guard every handgrad variant and peer against PyTorch, then time them all (a peer's
    guarded first step, compilation included, is its ``first_step``)."""
    ref_variant = next(v for v in w.variants if v.role == "torch")
    progress(f"{w.key}: checking every variant against PyTorch")
    ref, flops_step = probe_with_flops(ref_variant.make())
    flops = flops_step * w.rows / (w.batch or w.rows)
    rows: dict[str, Row] = {}
    for v in w.variants:
        row = Row(v.label, v.role, baseline=v.baseline)
        if v.role == "handgrad":
            row.guard = compare(v.make().probe(), ref)
        elif v.role == "peer":
            progress(f"{w.key}: {v.label}: first step (compiling)")
            row.guard, row.first_step = _check_peer(v, ref)
        rows[v.label] = row
    clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
    # a peer that failed its check is not timed (it may not even run)
    refused = {
        label for label, r in rows.items() if r.role == "peer" and not (r.guard and r.guard.ok)
    }
    timed = dataclasses.replace(w, variants=[v for v in w.variants if v.label not in refused])
    times = time_workload(timed, progress, clock, make_sync(device))
    for label, ts in times.items():
        rows[label].times = ts
        rows[label].median = statistics.median(ts)
    torch_median = rows[ref_variant.label].median
    for row in rows.values():
        if row.role != "torch" and (row.guard is None or row.guard.ok):
            row.speedup = torch_median / row.median
        if flops > 0 and row.times:
            row.gflops = flops / row.median / 1e9
        if row.baseline and row.baseline in rows:
            row.overhead = row.median / rows[row.baseline].median - 1.0
    return Result(w.key, w.title, w.unit, w.rows, flops, list(rows.values()))


def _check_peer(v: Variant, ref: dict[str, Any]) -> tuple[Guard, float | None]:
    """A peer's guard and its first step's time (compilation included); a peer that raises
    is refused with the error's first line, and the bench goes on."""
    t0 = time.perf_counter()
    try:
        probed = v.make().probe()
    except Exception as exc:  # a peer's own failure (a compiler error, a missing kernel)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        return Guard(False, None, f"failed: {type(exc).__name__}: {first}"), None
    return compare(probed, peer_reference(ref)), time.perf_counter() - t0


def _measure_peaks(
    cfg: Config,
    device: torch.device,
    workloads: list[Workload],
    results: list[Result],
    progress: Progress,
) -> None:
    """Fill each row's ``peak_bytes`` (the floor's stays ``None``): on a GPU one variant after
    another in this process; on the CPU in fresh processes, side by side (memory is not time)."""
    jobs = [
        (w, r, [v for v in w.variants if v.role not in ("floor", "peer")])
        for w, r in zip(workloads, results, strict=True)
    ]
    n_variants = sum(len(vs) for _, _, vs in jobs)
    peaks: Iterable[dict[str, int] | None]
    if device.type == "cuda":
        progress(f"peak GPU memory: {n_variants} variants, one after another")
        mem = CudaMemory(device)
        peaks = (measure_device_memory(vs, mem) for _, _, vs in jobs)
    else:
        progress(f"peak memory: {n_variants} variants, each in its own process")
        workers = max(1, min(4, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            peaks = list(pool.map(lambda job: measure_memory(cfg, job[0], job[2]), jobs))
    for (_, r, _), by_label in zip(jobs, peaks, strict=True):
        for row in r.results:
            if by_label is not None and row.label in by_label:
                row.peak_bytes = by_label[row.label]
