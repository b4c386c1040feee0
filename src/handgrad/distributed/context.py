"""One rank's view of a data-parallel job: :class:`DistContext`, and joining a process group.

A training function receives a ``DistContext`` and calls its collectives (barrier, all-reduce,
broadcast, rank-0-only helpers); with ``world_size == 1`` they are no-ops, so the same
function runs alone or distributed. Every collective has a timeout and turns a failure into a
one-line :class:`DistributedError` naming the rank, so nothing waits forever.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from handgrad.errors import HandgradError
from handgrad.train.devices import resolve_device

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistContext",
    "DistributedError",
    "default_timeout",
    "init_from_env",
    "join",
    "launched_by_torchrun",
    "shutdown",
    "threads_per_rank",
]

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "HANDGRAD_DIST_TIMEOUT"
T = TypeVar("T")
CPU = torch.device("cpu")


class DistributedError(RuntimeError):
    """A collective failed (a rank died or stopped answering) or a rank exited with an error.
    The message is one line naming the rank and the operation. Raised by
    :func:`~handgrad.distributed.launch.spawn`, it carries ``outcomes``: how every rank ended
    (:class:`~handgrad.distributed.launch.RankOutcome`)."""

    def __init__(self, message: str, outcomes: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


def default_timeout() -> float:
    """Seconds a collective may wait: ``HANDGRAD_DIST_TIMEOUT``, else 300."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise HandgradError(f"{TIMEOUT_ENV}={text!r}: give a positive number of seconds")
    return value


@dataclass(frozen=True)
class DistContext:
    """One rank's view of the job. ``world_size == 1`` means no process group: every collective
    is a no-op, so the same training function runs alone or distributed.

    Attributes:
        rank: this process's index in ``[0, world_size)``; rank 0 is the main process.
        world_size: number of processes (replicas).
        local_rank: index on this machine (selects the GPU).
        device: where this rank computes (``cuda:<local_rank>`` on GPUs).
        backend: ``"gloo"``, ``"nccl"``, or ``None`` without a process group.
        timeout_s: how long any collective may wait for the other ranks.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        except (RuntimeError, dist.DistError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed after "
                f"{time.perf_counter() - start:.1f} s (timeout {self.timeout_s:g} s): another "
                f"rank died or stopped answering; see the first error among the ranks' output "
                f"[{first}]"
            ) from exc

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank gets here (on the gloo/NCCL connection, with the timeout)."""
        if self.distributed:
            # An all_reduce of one element is a barrier that honours the process group's
            # timeout on every backend (dist.barrier on NCCL may pick a device by itself).
            flag = torch.zeros(1, device=self.device)
            self._collective(what, lambda: dist.all_reduce(flag))

    def all_reduce_(self, tensor: Tensor, what: str = "all_reduce") -> Tensor:
        """Sum ``tensor`` over all ranks, in place."""
        if self.distributed:
            self._collective(what, lambda: dist.all_reduce(tensor))
        return tensor

    def broadcast_(self, tensor: Tensor, src: int = 0, what: str = "broadcast") -> Tensor:
        """Overwrite ``tensor`` on every rank with rank ``src``'s, in place."""
        if self.distributed:
            self._collective(what, lambda: dist.broadcast(tensor, src))
        return tensor

    @contextmanager
    def main_first(self, what: str = "preparing data") -> Iterator[None]:
        """Run the block (a download, unpacking, a cache) rank by rank in three waves: rank 0
        first; then the first rank of every other machine (``local_rank`` 0), for machines
        that do not share rank 0's disk; then all the others, which find the files in place.
        No two processes of one machine write the same files at the same time."""
        if not self.distributed:
            yield
            return
        if self.rank != 0:
            self.barrier(f"waiting for rank 0 ({what})")
        if self.local_rank != 0:
            self.barrier(f"waiting for the first rank of each machine ({what})")
        yield
        if self.rank == 0:
            self.barrier(f"releasing the other ranks after {what}")
        if self.rank == 0 or self.local_rank == 0:
            self.barrier(f"releasing this machine's other ranks after {what}")

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn`` on rank 0 only (write a checkpoint, a log file, a plot); every rank
        returns after it finished, so a file written here is complete when anyone reads it."""
        result = fn(*args, **kwargs) if self.is_main else None
        self.barrier(f"waiting for rank 0 to run {getattr(fn, '__name__', 'a function')}")
        return result

    def log(self, *values: Any, **kwargs: Any) -> None:
        """``print`` on rank 0 only (one log for the whole job)."""
        if self.is_main:
            print(*values, **kwargs, flush=True)


# --------------------------------------------------------------------------------------------
# Joining a process group: from torchrun's environment, or as a spawned local worker
# --------------------------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or any launcher setting RANK and
    WORLD_SIZE the same way)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _device_for(device: str | torch.device | None, local_rank: int) -> torch.device:
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def _backend_for(device: torch.device, backend: str | None, world_size: int) -> str:
    if backend is not None:
        return backend
    if device.type == "mps" and world_size > 1:
        raise HandgradError(
            "--device mps: torch.distributed has no MPS backend; train on one process "
            "(--nproc 1) or use --device cpu"
        )
    return "nccl" if device.type == "cuda" else "gloo"


def threads_per_rank(world_size_here: int) -> int:
    """Split the cores between the local ranks (one BLAS thread pool each would oversubscribe
    them), unless the user chose with OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, world_size_here))


def join(
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    device: str | torch.device | None,
    backend: str | None,
    timeout_s: float,
    store: dist.Store | None,
) -> DistContext:
    """Join the process group as ``rank`` (through ``store``, else torchrun's ``env://``)."""
    dev = _device_for(device, local_rank)
    name = _backend_for(dev, backend, world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs: dict[str, Any] = {"rank": rank, "world_size": world_size, "timeout": timeout}
    if store is not None:
        kwargs["store"] = store
    else:
        kwargs["init_method"] = "env://"
    if name == "nccl":
        kwargs["device_id"] = dev  # bind the communicator to our GPU now, not lazily
    try:
        dist.init_process_group(name, **kwargs)
    except (RuntimeError, ValueError, dist.DistError) as exc:
        raise DistributedError(
            f"rank {rank}/{world_size}: joining the process group ({name}) failed: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        ) from exc
    return DistContext(rank, world_size, local_rank, dev, name, timeout_s)


def init_from_env(
    device: str | torch.device | None = "auto",
    backend: str | None = None,
    timeout_s: float | None = None,
) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)."""
    needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise HandgradError(
            f"distributed launch: the environment lacks {', '.join(missing)}; start with "
            "torchrun (e.g. torchrun --nproc-per-node 2 ...) or use --nproc N"
        )
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise HandgradError(f"distributed launch: RANK/WORLD_SIZE/LOCAL_RANK: {exc}") from exc
    torch.set_num_threads(threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return join(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=device,
        backend=backend,
        timeout_s=timeout_s or default_timeout(),
        store=None,
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the process group after a successful run (after an error, just exit: a peer that
    is gone cannot take part in an orderly shutdown)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
