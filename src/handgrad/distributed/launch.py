"""Starting the ranks of a data-parallel job and ending them cleanly: :func:`run`, :func:`spawn`.

:func:`run` works three ways: under ``torchrun`` it joins the group described in the
environment; with ``nproc > 1`` it spawns that many local processes (the parent hosts the
rendezvous store on 127.0.0.1 and a port the OS picks, so there is no race for a port); with
``nproc == 1`` it calls the training function directly with a one-rank context. A failing
rank reports one line through the store and exits with a status saying whether it is the root
cause or a victim; the parent stops the rest and names the root cause first (bad input that a
rank found is raised as the same one-line :class:`HandgradError` one process would raise). No
rank outlives the parent: each holds a :class:`~handgrad.distributed.inherit.Lifeline`.

``torch.distributed`` has no authentication or encryption: trusted networks only (see
docs/distributed.md).
"""

from __future__ import annotations

import datetime
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from handgrad.distributed.context import (
    DistContext,
    DistributedError,
    default_timeout,
    init_from_env,
    join,
    launched_by_torchrun,
    shutdown,
    threads_per_rank,
)
from handgrad.distributed.inherit import InheritedFd, Lifeline, fd_number, parent_stdio
from handgrad.errors import HandgradError
from handgrad.train.devices import resolve_device

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ERROR",
    "EXIT_PEER_LOST",
    "RankOutcome",
    "exit_with_error",
    "free_port",
    "run",
    "spawn",
]

EXIT_ERROR = 1  # this rank's own error (an exception in the training function)
EXIT_BAD_INPUT = 2  # this rank raised a HandgradError (bad input), as the CLI's status 2
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


def _error_key(rank: int) -> str:
    return f"handgrad/error/{rank}"


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
    stdio: tuple[InheritedFd | int, ...] | None  # stdout, stderr (None: keep inherited ones)
    lifeline: InheritedFd | int  # Lifeline.child_end (an int once unpickled in the rank)
    lifeline_write_fd: int  # Lifeline.write_fd, the launcher's end (closed if inherited)

    def adopt(self) -> None:
        """Make this process look like a child of the parent *now*, as ``spawn`` would."""
        Lifeline.hold(self.lifeline, self.lifeline_write_fd, on_loss=EXIT_PEER_LOST)
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        if self.stdio is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            for target, fd in zip((1, 2), map(fd_number, self.stdio), strict=True):
                os.dup2(fd, target)
                os.close(fd)


def _spawned_worker(rank: int, fn: Callable[..., Any], args: tuple[Any, ...], job: _Launch) -> None:
    """Entry point of each spawned rank (top level, so it can be pickled).

    A failure is reported to the parent through the rendezvous store it hosts (one line of
    text: no pickles cross between processes) and ends the process with a status saying
    whether this rank is the root cause (:data:`EXIT_ERROR`, :data:`EXIT_BAD_INPUT`) or a
    victim (:data:`EXIT_PEER_LOST`).
    """
    job.adopt()
    store = None
    try:
        torch.set_num_threads(threads_per_rank(job.world_size))
        store = dist.TCPStore(
            "127.0.0.1",
            job.port,
            world_size=None,
            is_master=False,
            timeout=datetime.timedelta(seconds=job.timeout_s),
        )
        ctx = join(
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
    """Hand this rank's one line to the parent, which prints the job's one line (N ranks
    printing theirs would bury the root cause among the victims' and gloo's), and exit."""
    if isinstance(exc, DistributedError):
        status, message = EXIT_PEER_LOST, str(exc)
    elif isinstance(exc, HandgradError):
        status, message = EXIT_BAD_INPUT, str(exc)
    else:
        status, message = EXIT_ERROR, f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()  # a bug or an unexpected error: the whole story
    message = message.splitlines()[0] if message.strip() else type(exc).__name__
    try:
        if store is None:
            raise ConnectionError("no store")
        store.set(_error_key(rank), message)
    except Exception:  # the parent cannot hear it: say it here
        exit_with_error(exc, status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # no destructors: see exit_with_error


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
        # The server imports this module once, so that every rank starts with
        # _spawned_worker (and torch) already loaded.
        mp.set_forkserver_preload(["torch", __name__])
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
        if self.status in (EXIT_ERROR, EXIT_BAD_INPUT) or (
            self.status is not None and self.status < 0
        ):
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
        HandgradError: a rank found bad input (its one line, as one process would say it).
        DistributedError: naming the root cause first (a rank that raised or was killed),
            then what happened to the others; ``.outcomes`` lists every rank's ending.
    """
    if nproc < 1:
        raise HandgradError(f"--nproc {nproc}: give a positive number of processes")
    timeout = timeout_s or default_timeout()
    store = _free_store(timeout)  # lives in this process until every rank has finished
    context = mp.get_context(start_method or _start_method())
    lifeline = Lifeline()
    job = _Launch(
        nproc, store.port, device, backend, timeout, dict(os.environ), os.getcwd(),
        parent_stdio(), lifeline.child_end, lifeline.write_fd,
    )  # fmt: skip
    procs = [
        context.Process(
            target=_spawned_worker,
            args=(r, fn, tuple(args), job),
            name=f"handgrad-rank-{r}",
        )
        for r in range(nproc)
    ]
    try:
        for p in procs:
            p.start()
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
        lifeline.close()
    outcomes = []
    for r, p in enumerate(procs):
        message = store.get(_error_key(r)).decode() if store.check([_error_key(r)]) else None
        outcomes.append(RankOutcome(r, p.exitcode, message, r in stopped))
    failed = sorted((o for o in outcomes if o.status != 0), key=lambda o: (o.blame, o.rank))
    if failed[0].status == EXIT_BAD_INPUT and failed[0].message:
        raise HandgradError(failed[0].message)
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for launching ranks by hand, as tests do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
