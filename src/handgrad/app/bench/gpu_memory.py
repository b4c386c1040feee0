"""Peak memory on a GPU: the memory PyTorch's caching allocator had handed out at its highest
during one run of each variant, over what was allocated just before it. Measured in this
process, one variant after another: a process that has initialised CUDA must not fork, and
host RSS says nothing about the device."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Protocol

import torch

from handgrad.app.bench.jobs import Job
from handgrad.app.bench.workloads import Variant

GPU_MEMORY_METHOD = (
    "peak GPU memory allocated by PyTorch's CUDA caching allocator during one run "
    "(torch.cuda.max_memory_allocated) over what was allocated just before it, in this "
    "process, after a warm-up step, empty_cache and reset_peak_memory_stats"
)


class DeviceMemory(Protocol):
    """The allocator statistics :func:`device_peak` needs (:class:`CudaMemory` on a GPU)."""

    def synchronize(self) -> None: ...

    def empty_cache(self) -> None: ...

    def reset_peak(self) -> None: ...

    def allocated(self) -> int: ...

    def max_allocated(self) -> int: ...


class CudaMemory:
    """PyTorch's CUDA caching allocator: bytes handed out to tensors (not the cached pool)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def max_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def device_peak(make: Callable[[], Job], mem: DeviceMemory) -> int:
    """Extra peak device memory (bytes) of one ``run`` of a fresh job over what was allocated
    just before it (its data, model and whatever else lives in this process). A first fresh
    job takes one step so that library handles and workspaces exist (and stay allocated)
    before the peak counter is reset."""
    make().probe()
    job = make()
    gc.collect()
    mem.synchronize()
    mem.empty_cache()
    mem.reset_peak()
    before = mem.allocated()
    job.run()
    mem.synchronize()
    return max(0, mem.max_allocated() - before)


def measure_device_memory(variants: list[Variant], mem: DeviceMemory) -> dict[str, int]:
    """Each variant's :func:`device_peak`, one after another in this process (never forked:
    a process that has initialised CUDA cannot fork safely)."""
    return {v.label: device_peak(v.make, mem) for v in variants}
