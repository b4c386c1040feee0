"""``handgrad train`` (the default ``mlp`` recipe on mnist-sample) on the readable path and on
the fused fast path: wall time of the whole command and final valid accuracy (issue 16).

For each seed, the two commands run back to back (alternating which goes first), each as its
own process, exactly as a user types them:

    handgrad train --seed S --quiet --out DIR --no-fast     # the readable path (as before)
    handgrad train --seed S --quiet --out DIR               # the default: the fast path

    .venv/bin/python benchmarks/bench_fast_train.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HANDGRAD = str(Path(sys.executable).with_name("handgrad"))


def one(seed: int, fast: bool, out: Path) -> tuple[float, float, float]:
    """(wall seconds, train seconds, final valid accuracy) of one run."""
    cmd = [HANDGRAD, "train", "--seed", str(seed), "--quiet", "--out", str(out), "--overwrite"]
    if not fast:
        cmd.append("--no-fast")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    return wall, metrics["train_seconds"], metrics["valid_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args()
    rows: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            for fast in (False, True) if i % 2 == 0 else (True, False):
                rows[fast].append(one(seed, fast, Path(tmp) / f"s{seed}-{fast}"))
    for fast, label in ((False, "--no-fast (readable)"), (True, "default (fast)")):
        walls = [r[0] for r in rows[fast]]
        trains = [r[1] for r in rows[fast]]
        accs = " ".join(f"{r[2]:.4f}" for r in rows[fast])
        print(
            f"{label:22s} wall median {statistics.median(walls):.2f} s "
            f"({' '.join(f'{w:.2f}' for w in walls)}); train_seconds median "
            f"{statistics.median(trains):.2f}; valid accuracy {accs}"
        )
    slow = statistics.median(r[0] for r in rows[False])
    quick = statistics.median(r[0] for r in rows[True])
    print(f"wall-time speed-up {slow / quick:.2f}x")


if __name__ == "__main__":
    main()
