"""A/B of W4 (one training epoch of the ``cnn`` recipe: batch 128, AdamW, label smoothing) in
ONE process: this tree's handgrad against another copy of the package (e.g. the main
branch's) imported under another name, and PyTorch eager, alternating, median process-CPU
time over the rounds. The same data, weights and batch order for every side.

    cp -r /work/main/src/handgrad /tmp/hgmain/handgrad_main
    PYTHONPATH=src:/tmp/hgmain python benchmarks/bench_w4_ab.py --other handgrad_main \\
        --rows 2560 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from handgrad.app import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--other", help="importable name of the other handgrad package")
    ap.add_argument("--rows", type=int, default=2560)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--other-first", action="store_true", help="run the other package first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sides = {"this": bench}
    if args.other:
        sides["other"] = importlib.import_module(f"{args.other}.bench")
    jobs = {}
    for name, b in sides.items():
        cfg = b.Config(rows=args.rows, only=("W4",), memory=False, threads=1)
        workloads, _ = b.build_workloads(cfg)
        for v in workloads[0].variants:
            if v.label == "torch eager" and name != "this":
                continue
            jobs[f"{v.label} ({name})" if v.label != "torch eager" else v.label] = v.make()
    if args.other_first:
        jobs = dict(sorted(jobs.items(), key=lambda kv: "(other)" not in kv[0]))
    for job in jobs.values():
        job.run()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for k, job in jobs.items():  # alternating
            t0 = time.process_time()
            job.run()
            times[k].append(time.process_time() - t0)
    ref = statistics.median(times["torch eager"])
    print(
        f"torch {torch.__version__}, 1 thread, W4 with {args.rows:,} rows, process CPU time, "
        f"median of {args.repeats} alternating rounds"
    )
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<22}{med * 1e3:10.1f} ms   torch/this {ref / med:5.2f}x")


if __name__ == "__main__":
    main()
