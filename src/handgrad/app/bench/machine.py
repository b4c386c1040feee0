"""The machine the bench runs on: its description for the report, and, on a GPU, true
float32 for both sides while the bench runs."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from handgrad.train.devices import describe


def machine_info(peak: float, device: torch.device | None = None) -> dict[str, Any]:
    """CPU, GPU, versions, threads, the measured GEMM ``peak`` (FLOP/s) and the load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    device = device or torch.device("cpu")
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {
        "device": describe(device) if device.type == "cuda" else "cpu",
        "gpu": gpu,  # the GPU's name, None on the CPU
        "cuda": torch.version.cuda if gpu else None,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": peak / 1e9,  # of the device the bench ran on
        "load_average": list(load),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[dict[str, bool]]:
    """On a GPU, switch TF32 off for matrix products and cuDNN convolutions while the bench
    runs (PyTorch allows it for convolutions by default, which would give its side fewer
    mantissa bits than handgrad's matrix products). Yields the flags in effect (recorded in
    the report); restores them afterwards."""
    if device.type != "cuda":
        yield {}
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    try:
        yield {"matmul_tf32": bool(matmul.allow_tf32), "cudnn_tf32": bool(cudnn.allow_tf32)}
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
