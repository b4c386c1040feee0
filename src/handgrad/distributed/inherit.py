"""What a spawned rank inherits from its launcher: the launcher's stdout and stderr, and a
lifeline that ends the rank when the launcher is gone.

Ranks are forked from a fork server, not from the launcher, so neither comes for free: the
server's stdio is the one it was started with, and ``PR_SET_PDEATHSIG`` would watch the server
(which itself lives as long as any rank holds its pipe), not the launcher.
"""

from __future__ import annotations

import multiprocessing.reduction as mp_reduction
import os
import threading
from contextlib import suppress
from typing import Any

__all__ = ["InheritedFd", "Lifeline", "fd_number", "parent_stdio"]


class InheritedFd:
    """This process's file descriptor ``fd``, passed to a child at start."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        # Only valid while multiprocessing pickles a Process for starting (it collects the fds).
        return (_detach_fd, (mp_reduction.DupFd(self.fd),))


def _detach_fd(dup: Any) -> int:
    return int(dup.detach())


def fd_number(fd: InheritedFd | int) -> int:
    """The descriptor in this process: an int once unpickled by a forkserver or spawn child;
    still an :class:`InheritedFd` under ``fork``, which copies the object and every fd."""
    return fd.fd if isinstance(fd, InheritedFd) else fd


def parent_stdio() -> tuple[InheritedFd, InheritedFd] | None:
    """This process's stdout and stderr for a child (None when either is closed)."""
    try:
        os.fstat(1), os.fstat(2)
    except OSError:
        return None
    return (InheritedFd(1), InheritedFd(2))


class Lifeline:
    """A pipe whose only writer is the launcher: its read end, held by every rank, reaches end
    of file exactly when the launcher exits or is killed, by any signal, SIGKILL included.

    The launcher makes one per job and :meth:`close`\\ s it once every rank has ended; each rank
    calls :meth:`hold` on :attr:`child_end`, which ends the rank when the launcher is gone.
    """

    def __init__(self) -> None:
        read, self.write_fd = os.pipe()  # close-on-exec: the fork server never gets them
        self.child_end = InheritedFd(read)

    def close(self) -> None:
        for fd in (self.child_end.fd, self.write_fd):
            with suppress(OSError):
                os.close(fd)

    @staticmethod
    def hold(child_end: InheritedFd | int, write_fd: int, on_loss: int) -> None:
        """In a rank: ``os._exit(on_loss)`` as soon as the launcher is gone (a daemon thread
        waits for the end of the pipe). ``_exit`` runs no handler or destructor that could
        block on a process group whose launcher is dead; files are written atomically, so a
        rank stopped mid-write leaves no torn file."""
        read = fd_number(child_end)
        # Under ``fork`` this process inherited the write end too; holding it, the pipe would
        # never end. (The same number in a forkserver child is some other file: compare.)
        with suppress(OSError):
            if write_fd != read and os.fstat(write_fd).st_ino == os.fstat(read).st_ino:
                os.close(write_fd)

        def wait() -> None:
            with suppress(OSError):
                while os.read(read, 1):
                    pass
            os._exit(on_loss)

        threading.Thread(target=wait, name="handgrad-lifeline", daemon=True).start()
