"""A :func:`~handgrad.app.bench.run.run_bench` report as a rich table (the terminal) or as
GitHub markdown (for benchmarks/RESULTS.md): the same cells either way."""

from __future__ import annotations

import math
import re
from typing import Any

from rich.console import Group
from rich.table import Table

from handgrad.app.bench.targets import best_variant, peer_speedups

COLUMNS = ("workload", "variant", "median", "vs torch", "GFLOP/s", "of peak", "peak mem", "check")
RIGHT = {"median", "vs torch", "GFLOP/s", "of peak", "peak mem"}


def render(report: dict[str, Any]) -> Any:
    """The rich table of a report."""

    m = report["machine"]
    t = Table(
        title=f"handgrad vs PyTorch eager, same process, alternating, median; {_where(m)}, "
        f"{report['config']['clock']} clock, GEMM peak {m['gemm_peak_gflops']:.0f} GFLOP/s",
        title_justify="left",
    )
    for col in COLUMNS:
        t.add_column(_header(col, m), justify="right" if col in RIGHT else "left")
    for w in report["workloads"]:
        for i, r in enumerate(w["results"]):
            t.add_row(*_cells(w, i, r), end_section=i == len(w["results"]) - 1)
    header, rows = peer_table(report)
    if not rows:
        return t
    p = Table(
        title="handgrad against the peers: each peer's median and handgrad's best speed-up over "
        "it; below, each peer's first step (compilation included, not in the median)",
        title_justify="left",
    )
    for i, col in enumerate(header):
        p.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        p.add_row(*row)
    return Group(t, p)


def to_markdown(report: dict[str, Any]) -> str:
    """The table of a report as GitHub markdown, with the targets below."""
    m = report["machine"]
    load = ", ".join(f"{v:.2f}" for v in m["load_average"])
    header = " | ".join(_header(col, m) for col in COLUMNS)
    lines = [
        f"{_where(m)}, {report['config']['clock']} clock, GEMM peak "
        f"{m['gemm_peak_gflops']:.0f} GFLOP/s; {m['date']}; load average at the "
        f"end {load}; {report['seconds']:.0f} s in all.",
        "",
        f"| {header} |",
        "|" + "|".join("---:" if col in RIGHT else "---" for col in COLUMNS) + "|",
    ]
    for w in report["workloads"]:
        for i, r in enumerate(w["results"]):
            cells = [re.sub(r"\[/?red\]", "", c) for c in _cells(w, i, r)]
            lines.append("| " + " | ".join(cells) + " |")
    header, rows = peer_table(report)
    if rows:
        lines += ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    for line in report.get("subnormals", []) + report.get("notes", []):
        lines.append(f"- {line}")
    for t in report["targets"]:
        lines.append(f"- {'met' if t['met'] else '**missed**'}: {t['target']}: {t['value']}")
    return "\n".join(lines) + "\n"


def _cells(w: dict[str, Any], i: int, r: dict[str, Any]) -> list[str]:
    """Row ``i`` (``r``) of workload ``w``, one string per column (rich markup for red)."""
    return [
        f"{w['key']} {w['title']}" if i == 0 else "",
        r["label"],
        _fmt_time(r["median"], w),
        _fmt_speed(r),
        "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
        "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%",
        "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f} MiB",
        _fmt_guard(r),
    ]


def _header(col: str, m: dict[str, Any]) -> str:
    if col == "peak mem" and m.get("gpu"):
        return "peak GPU mem (allocated)"
    return col


def _where(m: dict[str, Any]) -> str:
    """Where the bench ran, for a title: the GPU (with the host CPU) or the CPU."""
    if m.get("gpu"):
        return f"GPU {m['device']}, CUDA {m['cuda']}, host {m['cpu']}, torch {m['torch']}, " + (
            "TF32 ON" if any(m.get("float32", {}).values()) else "TF32 off (true float32)"
        )
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads"


def _fmt_time(median: float, w: dict[str, Any]) -> str:
    if math.isnan(median):  # not timed (a refused peer)
        return "-"
    if w["unit"] == "rows/s":
        return f"{w['rows'] / median:,.0f} rows/s"
    return f"{median * 1e3:,.1f} ms"


def _fmt_speed(r: dict[str, Any]) -> str:
    if r["role"] == "torch":
        return "1.00x"
    if r["guard"] is not None and not r["guard"]["ok"]:
        return "[red]refused[/red]"
    s = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    if r["overhead"] is not None:
        s += f" ({100 * r['overhead']:+.0f}% vs {r['baseline']})"
    return s


def _fmt_guard(r: dict[str, Any]) -> str:
    g = r["guard"]
    if r["role"] == "torch":
        return "reference"
    if g is None:
        return "floor (not checked)"
    if g["ok"]:
        return f"ok ({g['error']:.0e})" if g["error"] is not None else "ok"
    return f"[red]WRONG[/red]: {g['detail']}"


def peer_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The peers' table: per workload that has peers a row with each peer's median and
    handgrad's best speed-up over it (peer median / handgrad's), and a row with each peer's
    first step, compilation included; a column per peer. Empty without peers."""
    peers: list[str] = []  # each workload's order kept: a new label goes after its predecessor
    for w in report["workloads"]:
        prev = None
        for label in (r["label"] for r in w["results"] if r["role"] == "peer"):
            if label not in peers:
                peers.insert(peers.index(prev) + 1 if prev in peers else len(peers), label)
            prev = label
    if not peers:
        return [], []
    rows = []
    for w in report["workloads"]:
        results = {r["label"]: r for r in w["results"]}
        if not any(label in results for label in peers):
            continue
        best, ref = best_variant(w), w["results"][0]
        speedups = peer_speedups(w)
        times = [_short(w), _fmt_time(ref["median"], w)]
        times.append(f"{_fmt_time(best['median'], w)} ({best['label']})" if best else "-")
        firsts = [f"{w['key']} first step", "", ""]
        for label in peers:
            r = results.get(label)
            if r is None:
                times.append("-")
            elif label not in speedups:
                times.append("refused")
            else:
                times.append(f"{_fmt_time(r['median'], w)}, {speedups[label]:.2f}x")
            first = r["first_step"] if r else None
            firsts.append("-" if first is None else f"{first:.2f} s")
        rows += [times, firsts]
    return ["workload", "torch eager", "handgrad (best)", *peers], rows


def _short(w: dict[str, Any]) -> str:
    """``W3 784-256-128-10 Adam``: a workload's key and what tells it apart, for a narrow
    table (W1's two rows differ by the input gradient)."""
    tags = {"with input grad": "input grad", "no input grad": "no input grad"}
    tag = next((t for k, t in tags.items() if k in w["title"]), "")
    return f"{w['key']} {tag}".strip()
