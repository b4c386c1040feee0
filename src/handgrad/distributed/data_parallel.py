"""Data-parallel training on ``torch.distributed``: N processes, one model replica each.

handgrad writes no communication layer of its own: processes talk through
``torch.distributed`` (gloo on CPU, NCCL on CUDA). What is handgrad's is *which* gradients
travel and *when*: each rank computes the hand-written gradients of its shard of the global
batch, and :class:`DataParallel` averages them across ranks before the optimizer step, so every
replica takes the same step the one-process run would take on the whole global batch::

    def train(ctx: DistContext) -> None:          # runs on every rank
        model = build_model("mlp").to(ctx.device)
        dp = DataParallel(model, ctx)             # rank 0's initial weights on every rank
        loader = ShardedLoader(x, y, batch_size=256 // ctx.world_size, rank=ctx.rank,
                               world_size=ctx.world_size, seed=0, device=ctx.device)
        for epoch in range(3):
            loader.set_epoch(epoch)               # a new permutation, sharded across ranks
            for xb, yb in loader:
                loss = loss_fn(model(xb), yb)
                model.backward(loss_fn.backward()[0], need_input_grad=False)
                dp.reduce_gradients()             # p.g = mean over ranks, few all_reduce calls
                opt.step(); opt.zero_grad()
            dp.sync_buffers()                     # BatchNorm running statistics, see below
        ctx.on_main(save_checkpoint, model)       # rank 0 writes; the others wait

    run(train, nproc=2)      # spawns 2 local processes; under torchrun it runs in-process

With the :class:`~handgrad.train.learner.Learner`, add :class:`DataParallelCallback` (and
:class:`AverageTrainMetrics`, so that rank 0 reports the loss of all ranks) and give each rank
its shard of the training data; ``handgrad train --nproc N`` does exactly that.

Launching. :func:`run` works three ways: under ``torchrun`` (the environment has ``RANK`` and
``WORLD_SIZE``) it joins the process group described there; with ``nproc > 1`` it spawns that
many local processes (the parent hosts the rendezvous store on 127.0.0.1 and a free port, so
there is no port to choose and no race for one); with ``nproc == 1`` it calls ``train``
directly with a one-rank context and no process group, and every collective is a no-op.

The semantics, decided and documented:

- **Sharding** (:func:`shard_indices`): every epoch has one permutation of the dataset,
  a function of ``(seed, epoch)`` only, the same on every rank. Rank ``r`` takes positions
  ``r, r + W, r + 2W, ...`` of it (strided, as ``torch.utils.data.DistributedSampler``), so
  the ``k``-th per-rank batches of all ranks together are exactly the ``k``-th batch of size
  ``W * batch_size`` of the one-process run on the same permutation: with mean losses and
  averaged gradients, ``W`` processes take the same steps as one process with the global
  batch (tested to float32 round-off). When ``N`` is not a multiple of ``W`` the permutation is
  padded by wrapping around, because every rank must take the same number of steps (a rank
  with one batch more would wait in an ``all_reduce`` nobody else joins).
  ``handgrad.data.DataLoader(rank=, world_size=)``, shuffled, shards the same strided way but
  drops the last ``N % W`` rows of the order instead of padding; in sequential order it takes
  contiguous blocks.
- **Gradients**: averaged (sum, then divide by ``W``) in flattened buckets of at most
  ``bucket_mb`` megabytes, one ``all_reduce`` per bucket, all buckets in flight at once. For an
  MNIST MLP that is one call per step. A parameter whose ``.g`` is ``None`` on a rank
  contributes zeros (so pass only the parameters that are trained).
- **Initial weights**: ``DataParallel`` broadcasts rank 0's parameters and buffers, so the
  replicas start equal whatever their seeds.
- **BatchNorm statistics**: each rank normalises with the statistics of *its own* shard of the
  batch (as ``torch.nn.parallel.DistributedDataParallel`` does by default; synchronising batch
  statistics inside forward and backward would add two collectives per BatchNorm layer per
  step). Running statistics therefore drift apart between ranks; :meth:`DataParallel.sync_buffers`
  averages every floating-point buffer across ranks (and copies integer ones, such as counters,
  from rank 0). Call it at the end of each epoch, before validating and before saving, so that
  validation, the checkpoint written by rank 0 and every replica agree.
- **Rank 0 alone** logs (:meth:`DistContext.log`), writes checkpoints and files
  (:meth:`DistContext.on_main`: the others wait at a barrier until it is done) and downloads
  data (:meth:`DistContext.main_first`: rank 0 runs the block first, then the first rank of
  each other machine, then the rest, which find the files in place).
- **Failure**: every collective has a timeout (``timeout_s``, default 300 s, environment
  ``HANDGRAD_DIST_TIMEOUT``). A rank that dies closes its connections, and the others fail in
  their next collective at once; a rank that hangs makes the others fail when the timeout
  expires. Either way each survivor raises :class:`DistributedError` with one line naming its
  rank and what failed, and exits non-zero (:data:`EXIT_PEER_LOST`); the spawning parent then
  stops any rank left and reports the root cause first. Nothing waits forever.

Security: ``torch.distributed`` has **no authentication or encryption**. Anyone who can reach
the rendezvous port can join the job or send it data; use it only on a trusted network.
"""

from __future__ import annotations

import datetime
import multiprocessing.connection as mp_connection
import multiprocessing.reduction as mp_reduction
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from handgrad.errors import HandgradError
from handgrad.nn.module import Module, Parameter
from handgrad.train.devices import resolve_device

__all__ = [
    "EXIT_ERROR",
    "EXIT_PEER_LOST",
    "AverageTrainMetrics",
    "DataParallel",
    "DataParallelCallback",
    "DistContext",
    "DistributedError",
    "RankOutcome",
    "ShardedLoader",
    "epoch_permutation",
    "exit_with_error",
    "free_port",
    "init_from_env",
    "launched_by_torchrun",
    "run",
    "shard_indices",
    "shutdown",
    "spawn",
]

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "HANDGRAD_DIST_TIMEOUT"
T = TypeVar("T")
CPU = torch.device("cpu")


class DistributedError(RuntimeError):
    """A collective failed (a rank died or stopped answering) or a rank exited with an error.
    The message is one line naming the rank and the operation. Raised by :func:`spawn`, it
    carries ``outcomes``: how every rank ended (:class:`RankOutcome`)."""

    def __init__(self, message: str, outcomes: Sequence[RankOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


def default_timeout() -> float:
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


# --------------------------------------------------------------------------------------------
# The per-rank context: who am I, where do I compute, and the collectives I use
# --------------------------------------------------------------------------------------------


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


def _threads_per_rank(world_size_here: int) -> int:
    """Split the cores between the local ranks (one BLAS thread pool each would oversubscribe
    them), unless the user chose with OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, world_size_here))


def _join(
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    device: str | torch.device | None,
    backend: str | None,
    timeout_s: float,
    store: dist.Store | None,
) -> DistContext:
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
    torch.set_num_threads(_threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return _join(
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


EXIT_ERROR = 1  # this rank's own error (an exception in the training function)
EXIT_PEER_LOST = 3  # a collective failed: another rank died or hung; not the root cause


def exit_with_error(exc: BaseException, status: int = EXIT_ERROR) -> NoReturn:
    """Print ``handgrad: error: <one line>`` and end this process with ``status`` at once.

    After a failed collective the process group cannot be shut down in order (its peer is
    gone), and the interpreter's normal exit would run the communicator's destructors, which
    may abort or block; ``os._exit`` skips them (stdout and stderr are flushed first).
    """
    print(f"handgrad: error: {exc}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this rank if the launching process dies, so a
    killed launcher leaves no orphaned ranks behind."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _error_key(rank: int) -> str:
    return f"handgrad/error/{rank}"


class _InheritedFd:
    """This process's file descriptor ``fd``, passed to a child at start: a rank started by a
    forkserver would otherwise write to the stdout/stderr that the server was started with."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        # Only valid while multiprocessing pickles a Process for starting (it collects the fds).
        return (_detach_fd, (mp_reduction.DupFd(self.fd),))


def _detach_fd(dup: Any) -> int:
    return int(dup.detach())


@dataclass
class _Launch:
    """What every spawned rank needs to know about the job and about its parent."""

    world_size: int
    port: int
    device: str | torch.device | None
    backend: str | None
    timeout_s: float
    env: dict[str, str]  # the parent's environment and directory now, not the forkserver's
    cwd: str
    stdio: tuple[Any, Any] | None  # _InheritedFd for stdout, stderr (None: keep inherited ones)

    def adopt(self) -> None:
        """Make this process look like a child of the parent *now*, as ``spawn`` would."""
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        if self.stdio is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            for target, fd in zip((1, 2), self.stdio, strict=True):
                os.dup2(fd, target)
                os.close(fd)


def _parent_stdio() -> tuple[Any, Any] | None:
    try:
        os.fstat(1), os.fstat(2)
    except OSError:
        return None
    return (_InheritedFd(1), _InheritedFd(2))


def _spawned_worker(rank: int, fn: Callable[..., Any], args: tuple[Any, ...], job: _Launch) -> None:
    """Entry point of each spawned rank (top level, so it can be pickled).

    A failure is reported to the parent through the rendezvous store it hosts (one line of
    text: no pickles cross between processes) and ends the process with a status saying
    whether this rank is the root cause (:data:`EXIT_ERROR`) or a victim (:data:`EXIT_PEER_LOST`).
    """
    _die_with_parent()
    job.adopt()
    store = None
    try:
        torch.set_num_threads(_threads_per_rank(job.world_size))
        store = dist.TCPStore(
            "127.0.0.1",
            job.port,
            world_size=None,
            is_master=False,
            timeout=datetime.timedelta(seconds=job.timeout_s),
        )
        ctx = _join(
            rank=rank,
            world_size=job.world_size,
            local_rank=rank,
            device=job.device,
            backend=job.backend,
            timeout_s=job.timeout_s,
            store=store,
        )
        fn(ctx, *args)
        shutdown(ctx)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _report_and_exit(store, rank, RuntimeError(f"exit status {exc.code}"))
    except BaseException as exc:  # every failure must reach the parent, interrupts included
        _report_and_exit(store, rank, exc)


def _report_and_exit(store: dist.Store | None, rank: int, exc: BaseException) -> NoReturn:
    lost = isinstance(exc, DistributedError)
    if not isinstance(exc, DistributedError | HandgradError | KeyboardInterrupt):
        traceback.print_exc()  # a bug or an unexpected error: the whole story
    message = str(exc) if lost else f"{type(exc).__name__}: {exc}"
    if store is not None:
        with suppress(Exception):
            store.set(_error_key(rank), message.splitlines()[0] if message else "")
    exit_with_error(exc, EXIT_PEER_LOST if lost else EXIT_ERROR)


def _free_store(timeout_s: float) -> dist.TCPStore:
    """A rendezvous store on 127.0.0.1 and a port the OS picks (no race for a port)."""
    return dist.TCPStore(
        "127.0.0.1",
        0,
        world_size=None,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def _start_method() -> str:
    """``forkserver`` where available: each rank is forked from a clean server process that
    imported torch once (fast to start, unlike ``spawn``; safe with OpenMP and CUDA, unlike
    ``fork`` from a process that has already run a multi-threaded kernel)."""
    if "forkserver" in mp.get_all_start_methods():
        mp.set_forkserver_preload(["torch", "handgrad.distributed"])
        return "forkserver"
    return "spawn"


@dataclass
class RankOutcome:
    """How a spawned rank ended: ``status`` is its exit code (negative: killed by a signal)."""

    rank: int
    status: int | None
    message: str | None = None
    stopped_by_launcher: bool = False

    def describe(self) -> str:
        if self.message:
            return f"rank {self.rank}: {self.message}"
        if self.stopped_by_launcher:
            return f"rank {self.rank} did not finish and was stopped"
        if self.status is not None and self.status < 0:
            return f"rank {self.rank} was killed by signal {signal.Signals(-self.status).name}"
        return f"rank {self.rank} exited with status {self.status}"

    @property
    def blame(self) -> int:
        """Lower is more likely the root cause."""
        if self.status == EXIT_ERROR or (self.status is not None and self.status < 0):
            return 0 if not self.stopped_by_launcher else 2
        return 1 if self.status != EXIT_PEER_LOST else 3


def spawn(
    fn: Callable[..., Any],
    nproc: int,
    args: Sequence[Any] = (),
    *,
    device: str | torch.device | None = "cpu",
    backend: str | None = None,
    timeout_s: float | None = None,
    start_method: str | None = None,
    grace_s: float = 2.0,
) -> None:
    """Run ``fn(ctx, *args)`` in ``nproc`` new local processes, one rank each, and wait.

    When a rank fails, the others get ``grace_s`` seconds to notice and exit by themselves
    (they do, through their failing collective), then any left are stopped (SIGTERM, then
    SIGKILL). ``fn`` must be importable (defined at the top level of a module).

    Raises:
        DistributedError: naming the root cause first (a rank that raised or was killed),
            then what happened to the others; ``.outcomes`` lists every rank's ending.
    """
    if nproc < 1:
        raise HandgradError(f"--nproc {nproc}: give a positive number of processes")
    timeout = timeout_s or default_timeout()
    store = _free_store(timeout)  # lives in this process until every rank has finished
    context = mp.get_context(start_method or _start_method())
    job = _Launch(
        nproc, store.port, device, backend, timeout, dict(os.environ), os.getcwd(), _parent_stdio()
    )
    procs = [
        context.Process(
            target=_spawned_worker,
            args=(r, fn, tuple(args), job),
            name=f"handgrad-rank-{r}",
        )
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    try:
        while True:
            # One look at the exit codes per round: reading them twice could see a rank
            # finish in between and then wait on an empty list, which never returns.
            running = [p for p in procs if p.exitcode is None]
            if not running or any(p.exitcode not in (None, 0) for p in procs):
                break
            mp_connection.wait([p.sentinel for p in running])
        if all(p.exitcode == 0 for p in procs):
            return
        deadline = time.monotonic() + grace_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        stopped = _stop(procs)
    outcomes = []
    for r, p in enumerate(procs):
        message = store.get(_error_key(r)).decode() if store.check([_error_key(r)]) else None
        outcomes.append(RankOutcome(r, p.exitcode, message, r in stopped))
    failed = sorted((o for o in outcomes if o.status != 0), key=lambda o: (o.blame, o.rank))
    raise DistributedError("; ".join(o.describe() for o in failed), outcomes)


def _stop(procs: Sequence[Any]) -> set[int]:
    """Terminate ranks still running (SIGTERM, then SIGKILL: a stopped process ignores the
    first until continued). Returns the ranks that had to be stopped."""
    stopped = {r for r, p in enumerate(procs) if p.is_alive()}
    for r in stopped:
        procs[r].terminate()
    for r in stopped:
        procs[r].join(1.0)
        if procs[r].is_alive():
            procs[r].kill()
            procs[r].join()
    return stopped


def run(
    train_fn: Callable[..., Any],
    nproc: int = 1,
    *args: Any,
    device: str | torch.device | None = "auto",
    backend: str | None = None,
    timeout_s: float | None = None,
) -> None:
    """Run ``train_fn(ctx, *args)`` on every rank: under torchrun in this process; else in
    ``nproc`` spawned processes; with ``nproc == 1`` directly, without a process group.

    Under torchrun a :class:`DistributedError` ends this process (one line on stderr and
    status :data:`EXIT_PEER_LOST`, see :func:`exit_with_error`); when spawning, it is raised
    here once every rank has stopped, naming the root cause first.
    """
    if launched_by_torchrun():
        ctx = init_from_env(device, backend, timeout_s)
        try:
            train_fn(ctx, *args)
        except DistributedError as exc:
            exit_with_error(exc, EXIT_PEER_LOST)  # torchrun sees it and stops the other ranks
        shutdown(ctx)
    elif nproc == 1:
        train_fn(DistContext(device=resolve_device(device)), *args)
    else:
        spawn(train_fn, nproc, args, device=device, backend=backend, timeout_s=timeout_s)


# --------------------------------------------------------------------------------------------
# Sharding the data: one permutation per epoch, strided across the ranks
# --------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the ``n`` samples in ``epoch``: a function of ``(seed, epoch)`` only, so
    every rank (and a resumed run) computes the same one without communicating."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


def shard_indices(
    n: int,
    *,
    rank: int,
    world_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Tensor:
    """The sample indices rank ``rank`` visits in ``epoch``, in order.

    The epoch's order (a permutation, or ``0..n-1`` without ``shuffle``) is cut to a multiple
    of ``world_size`` (``drop_last``) or padded by wrapping around, then rank ``r`` takes
    positions ``r, r + W, r + 2W, ...``: disjoint (up to the padding), equal-size shards whose
    ``k``-th batches together form the ``k``-th global batch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if n < world_size and drop_last:
        raise ValueError(f"{n} samples cannot be split between {world_size} ranks")
    order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    if drop_last:
        order = order[: n - n % world_size]
    elif n % world_size:
        pad = world_size - n % world_size
        order = torch.cat([order, order.repeat(pad // n + 1)[:pad]])  # (n + pad,)
    return order[rank::world_size]


class ShardedLoader:
    """Batches of this rank's shard: ``(xb, yb)`` slices on ``device``.

    A minimal loader with the ``rank``/``world_size``/``set_epoch`` semantics of the data
    contract (``handgrad.data.DataLoader`` takes the same arguments); ``batch_size`` is per
    rank, the global batch is ``batch_size * world_size``.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = device
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        return shard_indices(
            len(self.x),
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
        )

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices()
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]  # (B,)
            # One gather and one copy per batch; non_blocking overlaps it with compute on GPUs.
            xb = self.x[b].to(self.device, non_blocking=True) if self.device else self.x[b]
            yb = self.y[b].to(self.device, non_blocking=True) if self.device else self.y[b]
            yield xb, yb


# --------------------------------------------------------------------------------------------
# Averaging gradients in buckets; broadcasting weights; BatchNorm buffers
# --------------------------------------------------------------------------------------------


def _buckets(tensors: Sequence[Tensor], cap_bytes: int) -> list[list[int]]:
    """Group tensor indices into buckets of one device and dtype and at most ``cap_bytes``
    (a tensor larger than the cap gets a bucket of its own). Reverse order: the last layer's
    gradients are ready first in backward, so a future overlap of communication with backward
    would send buckets in this order."""
    buckets: list[list[int]] = []
    open_: dict[tuple[torch.device, torch.dtype], tuple[list[int], int]] = {}
    for i in reversed(range(len(tensors))):
        t = tensors[i]
        key, size = (t.device, t.dtype), t.numel() * t.element_size()
        current, used = open_.get(key, ([], 0))
        if current and used + size > cap_bytes:
            buckets.append(current)
            current, used = [], 0
        current.append(i)
        open_[key] = (current, used + size)
    buckets.extend(b for b, _ in open_.values() if b)
    return buckets


class DataParallel:
    """Keeps one model replica per rank in step: equal initial weights, averaged gradients,
    synchronised buffers. See the module docstring for the semantics.

    Args:
        model: this rank's replica (already on ``ctx.device``).
        ctx: this rank's :class:`DistContext`.
        bucket_mb: gradients are flattened into buckets of at most this many megabytes, one
            ``all_reduce`` each (fewer, larger messages: per-call latency dominates small ones).
        broadcast: copy rank 0's parameters and buffers to every rank now.
        params: the parameters to average (default: all of ``model``'s).

    Attributes:
        calls_per_step: ``all_reduce`` calls made by each :meth:`reduce_gradients`.
        comm_seconds: wall time spent in :meth:`reduce_gradients` (including waiting for the
            slowest rank), for benchmarks.
    """

    def __init__(
        self,
        model: Module,
        ctx: DistContext,
        *,
        bucket_mb: float = 25.0,
        broadcast: bool = True,
        params: Sequence[Parameter] | None = None,
    ) -> None:
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        self.model, self.ctx = model, ctx
        self.params = list(params) if params is not None else model.parameters()
        self.buckets = _buckets(self.params, int(bucket_mb * 2**20))
        self.calls_per_step = len(self.buckets)
        self.comm_seconds = 0.0
        if broadcast:
            self.broadcast_state()

    def _state_tensors(self) -> list[Tensor]:
        params = [p.data for p in self.model.parameters()]
        return params + [b for _, b in self.model.named_buffers()]

    def broadcast_state(self) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's (flattened per bucket)."""
        tensors = self._state_tensors()
        for bucket in _buckets(tensors, 64 * 2**20):
            group = [tensors[i] for i in bucket]
            flat = torch.cat([t.reshape(-1) for t in group])  # (sum of numels,)
            self.ctx.broadcast_(flat, 0, "broadcasting rank 0's weights")
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))

    def reduce_gradients(self) -> None:
        """``p.g = mean over ranks of p.g`` for every parameter, in place of the local one.

        Every bucket's ``all_reduce`` is started before the first is waited for, so the
        messages overlap each other; the new ``p.g`` are views into the reduced flat buffers
        (no copy back).
        """
        if not self.ctx.distributed:
            return
        start = time.perf_counter()
        pending = []
        for bucket in self.buckets:
            group = [self.params[i] for i in bucket]
            flat = torch.cat(  # (sum of numels,)
                [(p.g if p.g is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            )
            work = self.ctx._collective(
                "all_reduce of gradients", lambda f=flat: dist.all_reduce(f, async_op=True)
            )
            pending.append((group, flat, work))
        world = float(self.ctx.world_size)
        for group, flat, work in pending:
            self.ctx._collective("all_reduce of gradients", work.wait)
            flat.div_(world)
            for p, part in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.g = part.view_as(p)
        self.comm_seconds += time.perf_counter() - start

    def sync_buffers(self) -> None:
        """Average floating-point buffers (BatchNorm running mean/variance) over ranks; copy
        the others (counters) from rank 0. Call before validating and before saving."""
        if not self.ctx.distributed:
            return
        for _, b in self.model.named_buffers():
            if b.is_floating_point():
                self.ctx.all_reduce_(b, "averaging buffers").div_(self.ctx.world_size)
            else:
                self.ctx.broadcast_(b, 0, "copying rank 0's buffers")


class DataParallelCallback:
    """:class:`handgrad.train.learner.Learner` callback that makes ``learn.fit`` data-parallel.

    - ``before_fit``: wraps ``learn.model`` in :class:`DataParallel` (rank 0's weights to all);
    - ``after_backward``: averages the gradients (it runs first among callbacks, ``order``
      -100, so gradient clipping or logging sees the averaged gradient);
    - ``after_epoch`` of the training pass: :meth:`DataParallel.sync_buffers`, so validation
      and checkpoints see the same BatchNorm statistics on every rank.

    Give every rank the *whole* validation set (unsharded): all ranks then compute identical
    metrics from identical weights, so decisions taken from metrics (early stopping, best
    checkpoint) are the same everywhere; a decision taken on one rank only would leave the
    others waiting in an all-reduce until the timeout. Attach progress bars and file-writing
    callbacks on rank 0 only (``ctx.is_main``).
    """

    order = -100
    name = "data_parallel"

    def __init__(self, ctx: DistContext, *, bucket_mb: float = 25.0) -> None:
        self.ctx, self.bucket_mb = ctx, bucket_mb
        self.dp: DataParallel | None = None

    def before_fit(self, learn: Any) -> None:
        shards = getattr(learn.train_dl, "world_size", None)
        if shards is not None and shards != self.ctx.world_size:
            raise HandgradError(
                f"rank {self.ctx.rank}: the training loader is split into {shards} shard(s) for "
                f"{self.ctx.world_size} ranks; create it with rank=ctx.rank, "
                "world_size=ctx.world_size"
            )
        self.dp = DataParallel(learn.model, self.ctx, bucket_mb=self.bucket_mb)

    def after_backward(self, learn: Any) -> None:
        if self.dp is not None:
            self.dp.reduce_gradients()

    def after_epoch(self, learn: Any) -> None:
        if self.dp is not None and learn.training:
            self.dp.sync_buffers()


class AverageTrainMetrics:
    """Learner callback: after each training pass, replace every ``train_*`` value of
    ``learn.metrics.values`` by its mean over the ranks, so that rank 0 reports the loss of the
    whole epoch, not of its shard. (Shards have equal sizes, so the mean of the ranks' means
    is the mean over all samples.) Runs after ``Metrics`` (order 10) computed the values and
    before ``Recorder`` (20), ``EarlyStopping`` (25) and ``Progress`` (50) read them.
    """

    order = 15
    name = None

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def after_epoch(self, learn: Any) -> None:
        metrics = getattr(learn, "metrics", None)
        if not (learn.training and self.ctx.distributed and metrics is not None):
            return
        keys = sorted(k for k in metrics.values if k.startswith("train_"))
        if keys:
            values = torch.tensor([metrics.values[k] for k in keys], dtype=torch.float64)
            values = values.to(self.ctx.device)  # NCCL reduces device tensors only
            self.ctx.all_reduce_(values, "averaging the epoch's training metrics")
            means = (values / self.ctx.world_size).tolist()  # the pass's one sync
            metrics.values.update(zip(keys, means, strict=True))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for launching ranks by hand, as tests do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
