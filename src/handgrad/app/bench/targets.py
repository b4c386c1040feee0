"""The performance targets, each with the value this run measured and whether it is met."""

from __future__ import annotations

from typing import Any

# The targets the project set for itself (benchmarks/RESULTS.md tracks them over time).
SPEEDUP_GOALS = {"W1": 1.1, "W2": 2.5, "W3": 1.1, "W4": 1.2}  # x faster than torch eager
FLOOR_RATIO = 1.25  # W1: at most this many times the time of its GEMMs alone
OVERHEAD = 0.15  # the Learner: at most this much slower than the loop it drives
#: x faster than the best peer (issue 16): W3 by a margin, the others ahead of every peer.
PEER_GOALS = {"W1": 1.0, "W2": 1.0, "W3": 1.25, "W4": 1.0}

#: Peak-memory differences up to this many bytes count as equal: RSS moves in pages and
#: malloc's chunks, and two runs of the same workload differ by this much.
MEMORY_SLACK = 128 * 1024


def targets(workloads: list[dict[str, Any]], *, gpu: bool = False) -> list[dict[str, Any]]:
    """Every target that applies to ``workloads`` (a report's), as ``{target, value, met}``
    (on a GPU the memory targets compare allocated GPU memory)."""
    out: list[dict[str, Any]] = []
    for w in workloads:
        b = best_variant(w)
        if b is not None:
            out += _speed(w, b, gpu)
            out += _peers(w, b)
        out += _overheads(w)
        out += _memory(w, gpu)
    return out


def best_variant(w: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest handgrad row that passed the guard and is not an overhead comparison."""
    hg = [r for r in w["results"] if r["role"] == "handgrad" and r["speedup"] is not None]
    hg = [r for r in hg if not r["baseline"]]
    return max(hg, key=lambda r: r["speedup"], default=None)


def peer_speedups(w: dict[str, Any]) -> dict[str, float]:
    """Handgrad's best speed-up over each peer that passed its check (peer median / best
    handgrad median), by the peer's label; empty without peers or handgrad rows."""
    b = best_variant(w)
    if b is None:
        return {}
    return {
        r["label"]: r["median"] / b["median"]
        for r in w["results"]
        if r["role"] == "peer" and r["guard"] is not None and r["guard"]["ok"] and r["times"]
    }


def _peers(w: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    speedups = peer_speedups(w)
    goal = PEER_GOALS.get(w["key"])
    if not speedups or goal is None:
        return []
    label, worst = min(speedups.items(), key=lambda kv: kv[1])
    return [
        {
            "target": f"{w['key']} ({w['title']}): >= {goal}x faster than the best peer",
            "value": f"{worst:.2f}x ({b['label']} vs {label})",
            "met": worst >= goal,
        }
    ]


def _speed(w: dict[str, Any], b: dict[str, Any], gpu: bool) -> list[dict[str, Any]]:
    out = []
    goal = SPEEDUP_GOALS.get(w["key"])
    if goal:
        out.append(
            {
                "target": f"{w['key']} ({w['title']}): >= {goal}x faster than torch eager"
                + (" (a CPU target; here on the GPU)" if gpu else ""),
                "value": f"{b['speedup']:.2f}x ({b['label']})",
                "met": b["speedup"] >= goal,
            }
        )
    floor = next((r for r in w["results"] if r["role"] == "floor"), None)
    if floor and w["key"] == "W1":
        ratio = b["median"] / floor["median"]
        out.append(
            {
                "target": f"{w['key']} ({w['title']}): within {FLOOR_RATIO}x of its GEMMs alone",
                "value": f"{ratio:.2f}x ({b['label']})",
                "met": ratio <= FLOOR_RATIO,
            }
        )
    return out


def _overheads(w: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "target": f"{w['key']}: {r['label']} within {OVERHEAD:.0%} of '{r['baseline']}'",
            "value": f"{100 * r['overhead']:+.1f}%",
            "met": r["overhead"] <= OVERHEAD,
        }
        for r in w["results"]
        if r["overhead"] is not None
    ]


def _memory(w: dict[str, Any], gpu: bool) -> list[dict[str, Any]]:
    out = []
    ref = next(r for r in w["results"] if r["role"] == "torch")
    what = "peak GPU memory" if gpu else "peak memory"
    for r in w["results"]:
        if r["role"] == "handgrad" and r["peak_bytes"] is not None and ref["peak_bytes"]:
            excess = r["peak_bytes"] - ref["peak_bytes"]
            # RSS moves in pages and chunks; the GPU allocator's counts are exact
            resolution = not gpu and 0 < excess <= 2**20
            note = " (within the ~1 MiB resolution of RSS)" if resolution else ""
            out.append(
                {
                    "target": f"{w['key']} ({w['title']}): {r['label']} {what} <= torch",
                    "value": f"{r['peak_bytes'] / 2**20:.1f} vs "
                    f"{ref['peak_bytes'] / 2**20:.1f} MiB{note}",
                    "met": excess <= MEMORY_SLACK,
                }
            )
    return out
