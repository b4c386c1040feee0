"""Subnormal floats as a policy: training flushes them to zero on the CPU by default.

A float32 below ``2**-126`` in magnitude is *subnormal*; x86 CPUs compute with such numbers
through a microcode assist that is 10-100x slower than a normal operation. Adam's moment
estimates decay towards them (``exp_avg`` of a weight whose gradient stays near zero), and
from the fourth epoch of a 784-256-128-10 MLP some 100,000 entries are subnormal and an epoch
takes 1.5x as long. Flush-to-zero (FTZ: results that would be subnormal are 0) and
denormals-are-zero (DAZ: subnormal inputs read as 0) remove the cost, and change no result
that matters: a subnormal is within ``1.2e-38`` of zero. XLA sets both in its CPU threads.

``torch.set_flush_denormal`` sets them in the calling thread only, but PyTorch's intra-op
(OpenMP) threads do half the work at two threads; so :func:`set_flush` also copies the calling
thread's floating-point environment into every OpenMP thread, by asking OpenMP's runtime to
run C's ``fesetenv`` in each (``GOMP_parallel(fesetenv, &env)``: no compiled code of ours).
Where that runtime is not found (no OpenMP in this PyTorch, not glibc), the calling thread
alone flushes.

    with subnormal_policy("flush"):   # what Loop.fit does; "keep" leaves IEEE behaviour
        ...
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

#: The policies: ``flush`` (FTZ and DAZ while training) or ``keep`` (IEEE subnormals).
POLICIES = ("flush", "keep")

_SMALLEST_NORMAL = 2.0**-126  # float32


def flushing() -> bool:
    """Whether this thread flushes float32 subnormals now: half the smallest normal float32,
    computed by a PyTorch kernel, comes out 0 (PyTorch has no getter for the flag)."""
    x = torch.full((1,), _SMALLEST_NORMAL)
    return bool((x * 0.5)[0] == 0)


def set_flush(on: bool) -> bool:
    """Flush subnormals to zero (``on``) or keep them, in this thread and in every OpenMP
    thread PyTorch computes with. False where the CPU cannot (then nothing changed)."""
    if not torch.set_flush_denormal(on):
        return False
    _broadcast_environment()
    return True


@contextmanager
def subnormal_policy(policy: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Apply ``policy`` (see :data:`POLICIES`) inside the block, on the CPU, and restore what
    was in force before, however the block ends. On other devices it changes nothing."""
    check_policy(policy)
    if torch.device(device).type != "cpu":
        yield
        return
    before = flushing()
    want = policy == "flush"
    if want != before:
        set_flush(want)
    try:
        yield
    finally:
        if want != before:
            set_flush(before)


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"subnormals={policy!r}: choose one of {', '.join(POLICIES)}")


def _broadcast_environment() -> None:
    """Copy this thread's floating-point environment (FTZ/DAZ included) into each thread of
    OpenMP's pool: ``GOMP_parallel(fn, data, 0, 0)`` runs ``fn(data)`` in every one of them."""
    calls = _openmp_calls()
    if calls is None:
        return
    gomp_parallel, fegetenv, fesetenv = calls
    env = ctypes.create_string_buffer(1024)  # fenv_t: 32 bytes on x86-64 glibc, 8 on arm64
    fegetenv(env)
    gomp_parallel(ctypes.cast(fesetenv, ctypes.c_void_p), ctypes.addressof(env), 0, 0)


@functools.cache
def _openmp_calls() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """``GOMP_parallel`` of the OpenMP runtime PyTorch loaded, and libm's ``fegetenv`` and
    ``fesetenv``; ``None`` where either is missing."""
    if not torch.backends.openmp.is_available():
        return None
    libm_name = ctypes.util.find_library("m")
    # The runtime torch ships (the wheel's own copy) or, for other builds, the system's:
    # loading the same file again returns the library already loaded, with its thread pool.
    candidates = [*sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))]
    candidates += [p for p in (ctypes.util.find_library("gomp"),) if p]
    for path in candidates:
        try:
            gomp, libm = ctypes.CDLL(str(path)), ctypes.CDLL(libm_name)
            gomp_parallel, fegetenv, fesetenv = gomp.GOMP_parallel, libm.fegetenv, libm.fesetenv
        except (OSError, AttributeError, TypeError):
            continue
        gomp_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        gomp_parallel.restype = None
        return gomp_parallel, fegetenv, fesetenv
    return None
