"""The peers: what a user would pick instead of handgrad, timed beside it in ``handgrad bench``
on the same data, initial weights, sizes and hyper-parameters, in the same alternating rounds.

    jax        JAX: a ``jax.jit`` training step, and the whole epoch in one ``lax.scan``
    compile    ``torch.compile`` of PyTorch eager's job: the loss, and the optimizer step too

One module per peer (``jax_peer.py``, ``compile_peer.py``), imported only when asked for; a peer
that cannot run here is skipped with one line (JAX: ``pip install 'handgrad[peers]'``).

Each peer is checked before it is timed, as handgrad's variants are, against PyTorch eager:
from the same weights, one step on the first batch (dropout off) must give the same loss and
the same parameters after the update (W1, which has no update: the same loss and gradients);
a peer that disagrees is refused (no speed-up). Its first step, compilation included, is timed
on its own (``first step``), apart from the rounds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor

from handgrad.app.bench.jobs import Job
from handgrad.app.bench.peers.spec import PeerSpec

__all__ = ["PEERS", "PeerSpec", "peer_reference", "peer_status", "peer_variants", "subnormals"]

#: ``--peers`` names and the modules that implement them.
PEERS = {"jax": "jax_peer", "compile": "compile_peer"}


def _module(name: str) -> Any:
    return importlib.import_module(f"handgrad.app.bench.peers.{PEERS[name]}")


def peer_status(name: str) -> tuple[bool, str]:
    """``(True, "")`` where peer ``name`` can run here, else ``(False, one line why)``."""
    return _module(name).status()


def peer_variants(name: str, spec: PeerSpec) -> list[tuple[str, Callable[[], Job]]]:
    """Peer ``name``'s variants of ``spec``'s workload: ``(label, make a job)`` each."""
    return _module(name).variants(spec)


def prepare(names: tuple[str, ...], threads: int | None) -> list[str]:
    """Before any peer runs: each peer's notes on this run's settings (one line each)."""
    notes = []
    for name in names:
        if peer_status(name)[0]:
            notes += [note for note in (_module(name).prepare(threads),) if note]
    return notes


def peer_reference(ref: dict[str, Tensor]) -> dict[str, Tensor]:
    """What a peer is checked on, from PyTorch eager's probe: after a training step the loss
    and the updated parameters (a compiled step never writes its gradients out); for W1, which
    has no step, the loss and the gradients."""
    if any(k.startswith("param:") for k in ref):
        return {k: v for k, v in ref.items() if not k.startswith("grad:")}
    return ref


def subnormals(names: tuple[str, ...], flush: bool) -> list[str]:
    """One line per side: how it treats subnormal floats in this run."""
    if flush:
        lines = [
            "subnormals: flushed to zero on every side (--ftz): FTZ/DAZ in every thread "
            "PyTorch computes with, for torch eager, torch.compile and handgrad"
        ]
    else:
        lines = [
            "subnormals as shipped: torch eager, torch.compile and handgrad's loops keep them "
            "(IEEE); handgrad's Learner rows flush them (Learner.fit's default)"
        ]
    for name in names:
        if peer_status(name)[0]:
            lines += [line for line in (_module(name).subnormals(),) if line]
    return lines
