"""A :func:`~handgrad.app.bench.run.run_bench` report as a rich table (the terminal) or as
GitHub markdown (for benchmarks/RESULTS.md): the same cells either way."""

from __future__ import annotations

import re
from typing import Any

from rich.table import Table

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
    return t


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
    lines.append("")
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
