"""What handgrad's compiled pieces share: the fast path's C++ training step
(:mod:`handgrad.fast`), the DataLoader's C row copy (:mod:`handgrad.data.rowcopy`) and the
convolution's C weight gradient (:mod:`handgrad.nn.functional.conv_fast`).

All are built on first use and cached in torch's extension folder; ``HANDGRAD_FAST=0`` turns
them off; a failed build is reported in one line, and the readable code runs instead. The two
plain C libraries are compiled by :func:`c_library` with the system's C compiler (a fraction of
a second, no torch headers) and called through :mod:`ctypes`, which lets go of the GIL.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from handgrad._io import temporary_beside

T = TypeVar("T")


def disabled() -> str | None:
    """Why compiled code must not be used (``HANDGRAD_FAST=0``), or ``None``."""
    return "disabled by HANDGRAD_FAST=0" if os.environ.get("HANDGRAD_FAST", "1") == "0" else None


def build_dir() -> Path:
    """Where builds are cached: ``$TORCH_EXTENSIONS_DIR``, else torch's default folder."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "torch_extensions"


def build_failure(source: Path, exc: BaseException) -> str:
    """One line on a failed build: the compiler's first ``error:`` line, else its first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "")
    return f"building {source.name} failed: {why[:200] or type(exc).__name__}"


class Build(Generic[T]):
    """One compiled piece, made by ``make`` on first use and at most once per process; ``None``
    with a one-line :attr:`failure` where it cannot be (``HANDGRAD_FAST=0``, no compiler, a
    failed build): the caller then runs the readable code."""

    def __init__(self, source: Path, make: Callable[[], T]) -> None:
        self.source, self._make = source, make
        self._built: T | None = None
        self.failure: str | None = None

    def get(self) -> T | None:
        if self._built is None and self.failure is None:
            self.failure = disabled()
            if self.failure is None:
                try:
                    self._built = self._make()
                except Exception as exc:  # no compiler, no headers, a failed build
                    self.failure = build_failure(self.source, exc)
        return self._built

    def status(self) -> tuple[bool, str]:
        """``(True, "")`` if it is built and loads, else ``(False, reason)``."""
        built = self.get() is not None
        return built, "" if built else str(self.failure)


def c_compiler() -> list[str]:
    """``$CC``, else the compiler Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def c_library(source: Path, flags: Sequence[str]) -> ctypes.CDLL:
    """Compile the C file ``source`` into a shared library, unless this very build is cached,
    and load it. Source, flags, compiler and machine are in the file's name: a cached build is
    only ever this one."""
    compiler = c_compiler()
    key = "\0".join([source.read_text(), *flags, *compiler, platform.machine()]).encode()
    target = build_dir() / f"handgrad_{source.stem}_{hashlib.sha256(key).hexdigest()[:12]}.so"
    if not target.exists():
        compile_c(compiler, source, flags, target)
    return ctypes.CDLL(str(target))


def compile_c(compiler: list[str], source: Path, flags: Sequence[str], target: Path) -> None:
    """Compile into a temporary file beside ``target`` and rename it into place: a reader (or
    another process building the same file) never sees half a library."""
    with temporary_beside(target) as tmp:
        done = subprocess.run(
            [*compiler, *flags, "-shared", "-fPIC", "-o", str(tmp), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip() or f"exit {done.returncode}")
        os.replace(tmp, target)
