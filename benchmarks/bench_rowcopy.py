"""The DataLoader's epoch gather: the compiled row copy against ``torch.index_select``.

    python benchmarks/bench_rowcopy.py                     # 1, 2, 4, ... up to all cores
    python benchmarks/bench_rowcopy.py --threads 1,2 --rounds 15

One shuffled epoch of 50,000 x 784 float32 rows (MNIST's training split) written into a
reused buffer, as the DataLoader does: ``torch.index_select(x, 0, idx, out=buf)`` against
``handgrad.data.rowcopy.gather_rows`` (x read in order, rows streamed to their places), both
in the same process, alternating, median of ``--rounds``, for each torch thread count (the row
copy splits its rows over as many threads; the DataLoader uses it up to
``rowcopy.MAX_THREADS``). The results are checked equal every round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from rich.table import Table

from handgrad.app.ui import make_console
from handgrad.data import hugepages, rowcopy


def buffer(shape: tuple[int, int]) -> torch.Tensor:
    """In huge pages where the machine has them, as the DataLoader keeps its buffers."""
    t = hugepages.empty(shape, torch.float32)
    return torch.empty(shape) if t is None else t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--threads", default="", help="comma-separated, e.g. 1,2,4")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = [int(n) for n in args.threads.split(",") if n] or [
        n for n in (1, 2, 4, 8, 16, 32, 64) if n < cores
    ] + [cores]
    built, why = rowcopy.status()
    if not built:
        raise SystemExit(f"the compiled row copy is unavailable here: {why}")

    g = torch.Generator().manual_seed(0)
    shape = (args.rows, 784)
    x = buffer(shape).copy_(torch.rand(shape, generator=g))
    outs = buffer(shape), buffer(shape)
    table = Table(
        title=f"one shuffled epoch of {args.rows:,} x 784 float32 rows ({x.nbytes / 2**20:.0f} "
        f"MiB), median of {args.rounds} rounds, torch {torch.__version__}, {cores} cores"
    )
    for name in ("threads", "index_select", "row copy", "speed-up", "the DataLoader uses"):
        table.add_column(name, justify="right")
    for threads in counts:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {"index_select": [], "row copy": []}
        for r in range(args.rounds + 1):  # round 0 warms up (page faults, first calls)
            idx = torch.randperm(args.rows, generator=g)
            runs = [
                ("index_select", lambda i: torch.index_select(x, 0, i, out=outs[0])),
                ("row copy", lambda i, n=threads: rowcopy.copy_rows(x, i, outs[1], n)),
            ]
            for name, fn in runs if r % 2 else runs[::-1]:
                start = time.perf_counter()
                fn(idx)
                if r:
                    times[name].append(time.perf_counter() - start)
            if not torch.equal(outs[0], outs[1]):
                raise SystemExit("the row copy and index_select disagree")
        a, b = (statistics.median(times[k]) for k in ("index_select", "row copy"))
        uses = "row copy" if threads <= rowcopy.MAX_THREADS else "index_select"
        table.add_row(str(threads), f"{a * 1e3:.1f} ms", f"{b * 1e3:.1f} ms", f"{a / b:.2f}x", uses)
    make_console().print(table)


if __name__ == "__main__":
    main()
