"""The gradient checker against the mutation catalogue: catch rate and time per check.

Runs every correct layer, every equivalent mutant and every wrong mutant of
tests/check/mutation.py for seeds 0-9, both by ``handgrad.gradcheck`` (the Python path) and by
``handgrad check FILE:Class ...`` run in-process (the CLI path), and prints:

- per operator: mutants; gradcheck checks not ok; checks caught (not ok AND status 1) by
  each path, as a catch rate; caught checks that named a tensor the mutation does not reach
  ("misnamed"); failed checks without the contract's hint words where one applies exactly;
- false alarms: checks of correct layers or equivalent mutants that did not pass;
- seconds per check, median and max, per path (the Python path times ``gradcheck`` alone;
  the CLI path the whole in-process command: import of the file, table, output);
- every wrong verdict, one line each (layer, operator, seed, path, the checker's line).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_gradcheck.py [--seeds 10] [--only NAME]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS / "check"))
sys.path.insert(0, str(TESTS))

from mutation import (  # noqa: E402
    BASES,
    MUTANTS,
    OPERATORS,
    check_cli,
    check_python,
    mutant_caught,
    names_right,
    write,
)
from support import run_cli  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--only", default="", help="only layers/mutants whose name contains this")
    opts = parser.parse_args()
    seeds = range(opts.seeds)
    folder = Path(tempfile.mkdtemp(prefix="bench_gradcheck_"))
    times: dict[str, list[float]] = {"python": [], "cli": []}
    wrong_verdicts: list[str] = []
    start = time.perf_counter()

    # correct layers and equivalent mutants: must pass
    alarms = {"python": 0, "cli": 0}
    passing_checks = 0
    subjects = [(f"base__{b.slug}", b.source, b, f"{b.name} (correct)") for b in BASES]
    subjects += [
        (m.slug, m.source, m.base, f"{m.name} (equivalent)") for m in MUTANTS if m.equivalent
    ]
    for slug, source, base, label in subjects:
        if opts.only not in label:
            continue
        path = write(folder, slug, source)
        for seed in seeds:
            passing_checks += 1
            v = check_python(path, base, seed)
            times["python"].append(v.seconds)
            if not (v.ok and v.status == 0):
                alarms["python"] += 1
                wrong_verdicts.append(f"FALSE ALARM {label} seed {seed} gradcheck: {v.summary}")
            c = check_cli(run_cli, path, base, seed)
            times["cli"].append(c.seconds)
            if not (c.ok and c.status == 0):
                alarms["cli"] += 1
                wrong_verdicts.append(f"FALSE ALARM {label} seed {seed} CLI: {c.summary}")

    # wrong mutants: must be caught
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in MUTANTS:
        if m.equivalent or opts.only not in m.name:
            continue
        row = rows[m.op.name]
        row["mutants"] += 1
        path = write(folder, m.slug, m.source)
        for seed in seeds:
            v = check_python(path, m.base, seed)
            times["python"].append(v.seconds)
            row["py_checks"] += 1
            row["py_not_ok"] += not v.ok
            if m.hint and not v.ok and m.hint not in v.summary:
                row["no_hint"] += 1
                wrong_verdicts.append(
                    f"NO HINT {m.hint!r} {m.name} seed {seed} gradcheck: {v.summary}"
                )
            if mutant_caught(v):
                row["py_caught"] += 1
                if not names_right(m, v, cli=False):
                    row["py_misnamed"] += 1
                    wrong_verdicts.append(
                        f"MISNAMED {m.name} seed {seed} gradcheck (expected "
                        f"{sorted(m.expected or ())}): {v.summary}"
                    )
            else:
                wrong_verdicts.append(
                    f"MISSED {m.name} seed {seed} gradcheck status {v.status}: {v.summary}"
                )
            c = check_cli(run_cli, path, m.base, seed, m.expected or frozenset())
            times["cli"].append(c.seconds)
            row["cli_checks"] += 1
            if mutant_caught(c):
                row["cli_caught"] += 1
                if not names_right(m, c, cli=True):
                    row["cli_misnamed"] += 1
                    wrong_verdicts.append(
                        f"MISNAMED {m.name} seed {seed} CLI (expected {sorted(m.expected or ())})"
                        f": {c.summary}"
                    )
            else:
                wrong_verdicts.append(
                    f"MISSED {m.name} seed {seed} CLI status {c.status}: {c.summary}"
                )

    elapsed = time.perf_counter() - start
    print(
        f"gradcheck mutation benchmark: {len(BASES)} correct layers, {len(MUTANTS)} mutants "
        f"({sum(m.equivalent for m in MUTANTS)} equivalent), seeds 0-{opts.seeds - 1}, "
        f"both paths; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; {elapsed:.0f} s in all"
    )
    print()
    head = (
        f"| {'operator':<17}| {'group':<34}| mutants | not ok (gradcheck) "
        "| caught (gradcheck) | caught (CLI) | misnamed | no hint |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    totals: dict[str, int] = defaultdict(int)
    for op in OPERATORS:
        row = rows.get(op.name)
        if not row:
            continue
        for k, v in row.items():
            totals[k] += v
        print(_row(op.name, op.group, row))
    print(_row("all", "", totals))
    print()
    print(
        f"false alarms (correct layers and equivalent mutants, {passing_checks} checks per "
        f"path): gradcheck {alarms['python']}, CLI {alarms['cli']}"
    )
    for path, ts in times.items():
        if ts:
            print(
                f"seconds per check, {'gradcheck' if path == 'python' else 'CLI (in-process)'}: "
                f"median {statistics.median(ts):.3f}, max {max(ts):.3f} ({len(ts)} checks)"
            )
    if wrong_verdicts:
        print()
        print(f"{len(wrong_verdicts)} wrong verdicts:")
        for line in wrong_verdicts:
            print(" ", line)
    return 1 if wrong_verdicts else 0


def _row(name: str, group: str, row: dict[str, int]) -> str:
    def rate(caught: int, checks: int) -> str:
        return f"{caught}/{checks} ({100 * caught / checks:.0f}%)" if checks else "-"

    return (
        f"| {name:<17}| {group[:34]:<34}| {row['mutants']:>7} "
        f"| {rate(row['py_not_ok'], row['py_checks']):>18} "
        f"| {rate(row['py_caught'], row['py_checks']):>18} "
        f"| {rate(row['cli_caught'], row['cli_checks']):>12} "
        f"| {row['py_misnamed'] + row['cli_misnamed']:>8} | {row['no_hint']:>7} |"
    )


if __name__ == "__main__":
    sys.exit(main())
