"""``handgrad bench``: handgrad against PyTorch eager (and the peers: JAX, torch.compile) on
the workloads W1-W5, in one process, the variants taking turns, median of rounds, each
handgrad variant and peer checked against PyTorch before it is timed. PyTorch's side is what
a user writes: ``torch.nn`` modules, ``loss.backward()`` and ``torch.optim`` with its defaults.

One module per job, in the order a run uses them:

    config.py      what to run (:class:`Config`)
    data.py        MNIST-shaped random rows, and the batches every variant sees
    models.py      the same initial weights on both sides, their tensors by name
    jobs.py        one timed variant: W1's gradient pass, the GEMM floor, W5's inference
    training.py    one training epoch (W2-W4), PyTorch's or one of handgrad's paths
    peers/         the peers a user would pick instead (JAX, torch.compile), as variants
    workloads.py   W1-W5 as lists of variants
    guard.py       the correctness guard: one step compared with PyTorch's
    timing.py      alternating timed rounds, FLOPs, the GEMM peak
    memory.py      peak RSS of a run, in fresh processes (Linux)
    gpu_memory.py  peak allocated GPU memory of a run
    machine.py     the machine's description; true float32 on a GPU
    targets.py     the performance targets, met or missed
    run.py         :func:`run_bench`: all of the above, into one report
    render.py      the report as a rich table or as markdown
"""

from handgrad.app.bench.config import Config
from handgrad.app.bench.gpu_memory import measure_device_memory
from handgrad.app.bench.guard import compare
from handgrad.app.bench.machine import exact_float32
from handgrad.app.bench.memory import measure_memory, memory_supported
from handgrad.app.bench.render import render, to_markdown
from handgrad.app.bench.run import run_bench
from handgrad.app.bench.timing import make_sync, time_workload
from handgrad.app.bench.workloads import Variant, Workload, build_workloads

__all__ = [
    "Config",
    "Variant",
    "Workload",
    "build_workloads",
    "compare",
    "exact_float32",
    "make_sync",
    "measure_device_memory",
    "measure_memory",
    "memory_supported",
    "render",
    "run_bench",
    "time_workload",
    "to_markdown",
]
