"""Atomic writes: every file handgrad writes goes through a temporary file beside its target and
a rename, so a reader, or a run killed at any moment, never sees half a file.

``atomic_file`` is the one implementation; ``write_bytes``, ``write_text`` and ``write_json``
are its common uses, and ``temporary_beside`` (with ``give_user_mode``) serves writers that are
other programs (a compiler) or that commit several files at once (a checkpoint).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def temporary_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary path in ``path``'s folder (created, empty); removed on the way out
    unless it was renamed away. Same folder, so the final ``os.replace`` is atomic."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", *, suffix: str = ".tmp", fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit flush it (``fsync`` for data that must
    survive a power cut), give it the permissions of any file the user creates, and rename it
    onto ``path``. On an exception the target is untouched and the temporary file removed."""
    target = Path(path)
    with temporary_beside(target, suffix) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        give_user_mode(tmp)
        os.replace(tmp, target)


def give_user_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the permissions of any file the user creates (0666 less the umask):
    ``mkstemp`` makes 0600 files, and handgrad's outputs are as readable as the user's own."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, suffix: str = ".tmp") -> Path:
    with atomic_file(path, "wb", suffix=suffix) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as indented JSON with a final newline."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
