"""``handgrad bench``: handgrad against PyTorch eager on the workloads W1-W5, and against
the peers a user would pick instead: JAX and torch.compile.

    handgrad bench                     # every workload, full size, with the peers installed
    handgrad bench --quick             # small sizes, no peers, under a minute
    handgrad bench --peers jax --only W3 --ftz   # JAX only; subnormals flushed on every side
    handgrad bench --only W2,W3 --json results.json
    handgrad bench --threads 1         # both sides single-threaded
    handgrad bench --device cuda       # on the GPU (fast path skipped, GPU memory measured)

Both sides run in this process, alternating, several rounds; the table shows medians, and
the line below it each workload's best speed-up. A handgrad variant whose parameters disagree
with PyTorch's after one step is marked WRONG and gets no speed-up: the exit status is 1 then,
0 otherwise (it says nothing about speed). --targets adds the project's performance targets,
met or missed (benchmarks/RESULTS.md tracks them). See handgrad.app.bench for how each column
is measured.

The peers (pip install 'handgrad[peers]' for JAX; torch.compile needs a C++ compiler) run on
the same data, initial weights and hyper-parameters, in the same rounds; each is checked
against PyTorch eager after one step (refused if it disagrees), and its first step, compilation
included, is reported apart. A second table puts them in columns, with handgrad's best speed-up
over each. They are on by default for a full run and off with --quick (compiling costs a
minute or more). Subnormal floats are left as each side ships them (JAX flushes them to zero;
PyTorch keeps them; handgrad's Learner flushes them), or flushed on every side with --ftz.

With --device cuda everything (data, both models, optimizers) lives on the GPU, each timed
interval is bracketed by torch.cuda.synchronize(), TF32 is off on both sides, the CPU-only
compiled fast path is skipped, --clock cpu is refused, and "peak mem" is the GPU memory
PyTorch's caching allocator had allocated at its highest during one run (max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from handgrad._io import write_text
from handgrad.app.bench import Config, render, run_bench, to_markdown
from handgrad.app.bench.peers import PEERS
from handgrad.app.bench.targets import best_variant, peer_speedups
from handgrad.app.outputs import check_file
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError
from handgrad.train.devices import resolve_device

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")


def add(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="time handgrad against PyTorch eager, JAX and torch.compile (W1-W5), with a "
        "correctness guard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (under a minute in all)")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W2,W3")
    p.add_argument(
        "--rows", type=int, help="rows of data for every workload (default: each workload's size)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="timed rounds per workload, median reported (default: 1 to 7 by workload, 3 "
        "with --quick)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N, or auto (cuda where PyTorch sees a GPU, else cpu)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads for both sides (default: torch's, every core)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (steadier on a shared machine, with --threads 1; "
        "CPU only)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--memory-repeats",
        type=int,
        default=1,
        help="fresh processes per peak-memory figure (median; small workloads vary by ~1 MiB; "
        "CPU only: on cuda the allocator's counts are exact, one run each)",
    )
    p.add_argument("--no-fast", action="store_true", help="skip the compiled fast path")
    p.add_argument(
        "--peers",
        default=None,
        metavar="NAMES",
        help=f"comma-separated peers to time beside handgrad: {', '.join(PEERS)} (default: all "
        "of them, none with --quick)",
    )
    p.add_argument("--no-peers", action="store_true", help="time no peer")
    p.add_argument(
        "--ftz",
        action="store_true",
        help="flush subnormal floats to zero on every side (default: each side as shipped)",
    )
    p.add_argument(
        "--targets",
        action="store_true",
        help="also print the project's performance targets, met or missed (small misses are "
        "often noise: compare several runs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="also write the results as JSON ('-': stdout; default: not written)",
    )
    p.add_argument(
        "--markdown", metavar="PATH", help="also write the table as markdown (default: not written)"
    )
    p.set_defaults(run=run)


def parse_config(args: argparse.Namespace) -> Config:
    only = tuple(w.strip().upper() for w in args.only.split(",") if w.strip())
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        raise HandgradError(f"--only {args.only!r}: unknown {unknown}; choose from {WORKLOADS}")
    for name in ("rows", "repeats", "threads", "memory_repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HandgradError(f"--{name} {value}: must be a positive integer")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and path != "-":
            check_file(path, option)  # before minutes of benchmarking, not after
    device = _device(args.device)  # --clock cpu with cuda: refused by run_bench
    peers = _peers(args)
    return Config(
        quick=args.quick,
        rows=args.rows,
        repeats=args.repeats,
        only=only,
        memory=not args.no_memory,
        memory_repeats=args.memory_repeats,
        fast=not args.no_fast,
        threads=args.threads,
        clock=args.clock,
        seed=args.seed,
        device=str(device),
        peers=peers,
        ftz=args.ftz,
    )


def _peers(args: argparse.Namespace) -> tuple[str, ...]:
    """``--peers`` checked, or the default: every peer for a full run, none with ``--quick``."""
    if args.no_peers:
        if args.peers is not None:
            raise HandgradError("--peers and --no-peers: give one of them")
        return ()
    if args.peers is None:
        return () if args.quick else tuple(PEERS)
    names = tuple(dict.fromkeys(n.strip().lower() for n in args.peers.split(",") if n.strip()))
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise HandgradError(
            f"--peers {args.peers!r}: unknown {unknown}; choose from {', '.join(PEERS)} "
            "(or --no-peers)"
        )
    return names


def _device(name: str) -> torch.device:
    """``--device``: ``auto`` is cuda where PyTorch sees a GPU, else the CPU (the bench does
    not support Apple's MPS); anything else is checked by :func:`resolve_device`."""
    if name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise HandgradError(f"--device {name}: handgrad bench runs on cpu or cuda only")
    return device


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(args)
    to_stdout = args.json == "-"
    console = make_console(stderr=to_stdout)
    with console.status("benchmarking") as status:
        report = run_bench(cfg, progress=lambda msg: status.update(msg))
    console.print(render(report))
    for line in report["skipped"]:
        console.print(f"skipped: {escape(line)}")  # "handgrad[peers]" is not rich markup
    for line in report["subnormals"] + report["notes"]:
        console.print(escape(line))
    for line in best_speedups(report):
        console.print(line)
    for t in report["targets"] if args.targets else []:
        mark = "[green]met[/green]" if t["met"] else "[yellow]missed[/yellow]"
        console.print(f"target {mark}: {t['target']}: {t['value']}")
    m = report["machine"]
    load = ", ".join(f"{v:.2f}" for v in m["load_average"])
    console.print(
        f"{m['date']}; load average {load}; peak memory: {report['memory_method']}; "
        f"finished in {report['seconds']:.0f} s"
    )
    text = json.dumps(report, indent=2)
    if to_stdout:
        print(text)
    elif args.json:
        _write(Path(args.json), text + "\n", "JSON results")
    if args.markdown:
        _write(Path(args.markdown), to_markdown(report), "markdown table")
    wrong = [
        f"{w['key']} {r['label']}"
        for w in report["workloads"]
        for r in w["results"]
        if r["guard"] is not None and not r["guard"]["ok"]
    ]
    if wrong:
        console.print(f"[red]refused[/red]: results differ from PyTorch for {', '.join(wrong)}")
    # a refused peer is reported, not an error of handgrad's: only handgrad's rows fail the run
    return 1 if any(not _is_peer(report, label) for label in wrong) else 0


def _is_peer(report: dict[str, Any], key_label: str) -> bool:
    return any(
        f"{w['key']} {r['label']}" == key_label and r["role"] == "peer"
        for w in report["workloads"]
        for r in w["results"]
    )


def best_speedups(report: dict[str, Any]) -> list[str]:
    """``W2 epoch 784-50-10 ...: speed-up 2.72x over torch eager (handgrad); 1.9x over JAX
    jit step, ...``: each workload's fastest variant that passed the correctness guard, and
    its speed-up over each peer that passed its own."""
    lines = []
    for w in report["workloads"]:
        b = best_variant(w)
        if b is None:
            continue
        line = (
            f"{w['key']} {w['title']}: speed-up {b['speedup']:.2f}x over torch eager ({b['label']})"
        )
        peers = peer_speedups(w)
        if peers:
            line += "; " + ", ".join(f"{s:.2f}x over {label}" for label, s in peers.items())
        lines.append(line)
    return lines


def _write(path: Path, text: str, what: str) -> None:
    """Write ``text`` atomically (a temporary file renamed into place)."""
    try:
        write_text(path, text)
    except OSError as exc:
        raise HandgradError(f"{path}: cannot write the {what} ({exc.strerror})") from exc
