"""Where a workload's time goes: matrix products, other kernels, and everything else.

Runs one workload of ``handgrad bench`` (default W2) under ``torch.profiler`` for every
variant and splits each variant's wall time into: GEMMs (``aten::mm``/``addmm``/``bmm``/conv
kernels, self time), the other ATen kernels (self time), and the rest (Python, the dispatcher,
the autograd engine, allocation): what a compiled step can remove. The profiler adds a few
microseconds per op to "the rest", so compare variants with each other, not with the bench.

    PYTHONPATH=src python benchmarks/bench_profile.py --workload W2 --rows 12800 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from handgrad.app import bench

GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", default="W2")
    ap.add_argument("--rows", type=int, default=12_800)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--top", type=int, default=8, help="kernels listed per variant")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench.Config(rows=args.rows, only=(args.workload,), memory=False)
    workloads, _ = bench.build_workloads(cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rows:,} rows")
    for w in workloads:
        steps = max(1, w.rows // (w.batch or w.rows))
        print(f"\n{w.key} {w.title}  (per step of {w.batch or w.rows} rows)")
        print(f"  {'variant':<15}{'wall':>10}{'GEMMs':>10}{'other ops':>11}{'the rest':>10}")
        details = []
        for v in w.variants:
            job = v.make()
            job.run()  # warm up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                job.run()
                wall = time.perf_counter() - t0
            events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
            gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM) / 1e6
            other = sum(e.self_cpu_time_total for e in events if e.key not in GEMM) / 1e6
            rest = max(0.0, wall - gemm - other)
            us = 1e6 / steps
            print(
                f"  {v.label:<15}{wall * us:>8.0f}us{gemm * us:>8.0f}us{other * us:>9.0f}us"
                f"{rest * us:>8.0f}us"
            )
            top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
            details.append((v.label, top, steps))
        for label, top, steps in details:
            ops = ", ".join(
                f"{e.key[6:]} {e.self_cpu_time_total / steps:.0f}us x{e.count // steps}"
                for e in top
            )
            print(f"  {label}: {ops}")


if __name__ == "__main__":
    main()
