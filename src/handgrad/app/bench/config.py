"""What ``handgrad bench`` runs: which workloads, how large, how many rounds, on which device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Config:
    """What to run. ``quick`` shrinks every workload; ``rows`` overrides every workload's
    number of rows (tests use a few hundred)."""

    quick: bool = False
    rows: int | None = None
    repeats: int | None = None
    only: tuple[str, ...] = ()
    memory: bool = True
    memory_repeats: int = 1
    fast: bool = True
    threads: int | None = None
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (process CPU time: steadier when shared)
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda[:N]" (checked by the CLI with resolve_device)
    peers: tuple[str, ...] = ()  # handgrad.app.bench.peers: "jax", "compile"
    ftz: bool = False  # flush subnormals to zero on every side (else each as shipped)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def n(self, full: int, quick: int) -> int:
        """Rows for a workload: ``full`` by default, ``quick`` with ``--quick``, or ``rows``."""
        if self.rows is not None:
            return self.rows
        return quick if self.quick else full

    def rounds(self, full: int) -> int:
        """Timed rounds for a workload: ``full``, fewer with ``--quick``, or ``repeats``."""
        if self.repeats is not None:
            return self.repeats
        return max(3, full // 2) if self.quick else full
