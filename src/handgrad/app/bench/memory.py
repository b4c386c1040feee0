"""Peak memory on the CPU: after all the timing, each variant runs once more in a fresh
process, and its peak is the extra resident memory it needed on top of its inputs. One
thread and one malloc arena, so that per-thread heaps add no noise; freed heap memory is
returned to the system (``malloc_trim``) and the kernel's peak-RSS counter reset
(``/proc/self/clear_refs``) just before the run. Linux only; elsewhere ``n/a``."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from handgrad.app.bench.config import Config
from handgrad.app.bench.jobs import Job
from handgrad.app.bench.workloads import Variant, Workload, build_workloads

CPU_MEMORY_METHOD = (
    "peak RSS over the pre-run RSS in a process of its own, forked from a fresh one-thread "
    "process that built the workload (VmHWM reset via /proc/self/clear_refs after a warm-up "
    "step and malloc_trim)"
)

#: The source folder holding the ``handgrad`` package (src/handgrad/app/bench/memory.py).
_SRC = Path(__file__).resolve().parents[3]


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _measure_peak(job: Job) -> int:
    """Extra peak RSS (bytes) of ``job.run()`` over the resident memory just before it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    job.run()
    return max(0, _status_kb("VmHWM") - before) * 1024


def memory_child() -> None:
    """Entry point of the fresh process that measures one workload's variants (JSON in on
    stdin, ``{label: bytes}`` out on stdout).

    The process imports torch and builds the workload's data once, then forks one child per
    variant, so each variant is measured in a process of its own that starts from the same
    state, without paying for the imports again.
    """
    spec = json.loads(sys.stdin.read())
    cfg = Config(**{**spec["config"], "only": tuple(spec["config"]["only"])})
    # One thread (and, from the parent, one malloc arena): the peak is a property of the
    # tensors a workload allocates; per-thread arenas only add noise. Set before any tensor
    # operation, so no OpenMP thread exists when this process forks.
    torch.set_num_threads(1)
    workloads, _ = build_workloads(cfg)
    w = next(w for w in workloads if w.title == spec["title"])
    peaks: dict[str, int] = {}
    for label in spec["labels"]:
        v = next(v for v in w.variants if v.label == label)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, leave without running any cleanup
            os.close(read)
            code = 1
            try:
                v.make().probe()  # load kernels and the fast path before the counter is reset
                os.write(write, str(_measure_peak(v.make())).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as f:
            answer = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not answer:
            raise RuntimeError(f"memory run of {w.key} {label} failed (status {status})")
        peaks[label] = int(answer)
    print(json.dumps(peaks))


def measure_memory(cfg: Config, w: Workload, variants: list[Variant]) -> dict[str, int] | None:
    """Median over ``cfg.memory_repeats`` fresh processes of each variant's extra peak RSS."""
    if not memory_supported():
        return None
    runs = [_memory_once(cfg, w, variants) for _ in range(cfg.memory_repeats)]
    return {v.label: int(statistics.median(r[v.label] for r in runs)) for v in variants}


def _memory_once(cfg: Config, w: Workload, variants: list[Variant]) -> dict[str, int]:
    spec = {
        "config": {**asdict(cfg), "only": [w.key], "peers": []},  # peers: not measured
        "title": w.title,
        "labels": [v.label for v in variants],
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["MALLOC_ARENA_MAX"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from handgrad.app.bench.memory import memory_child; memory_child()",
        ],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory runs of {w.key} failed: {proc.stderr[-2000:]}")
    return {k: int(b) for k, b in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
