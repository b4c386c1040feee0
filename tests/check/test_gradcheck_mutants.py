"""Mutation testing of the gradient checker (issue 13): every mutant of a correct layer is
caught, every correct layer and every equivalent mutant passes, by ``gradcheck`` and by
``handgrad check`` (run in-process), for seeds 0-9.

The layers and the mutation operators are in tests/check/mutation.py; the catalogue is generated
from them (see ``mutation.MUTANTS``). A mutant is *caught* when the report is not ok with
status 1 (a wrong gradient, not "could not check") and the failing tensor named is one the
mutation reaches (``Mutant.expected``; not asserted where that is not well defined: an
in-place write into out.g, a sub-module's input gradient).

Where the contract names the failure exactly (one whole gradient transposed, negated or scaled
by a constant; a NaN/Inf; a write into out.g), the report must also use its hint words.

Time: a check takes 40-110 ms on this 2-core machine and the catalogue has over 200 wrong
mutants, so by default, to keep the file near 90 s: correct layers and equivalent mutants run
seeds 0-9 by ``gradcheck`` and ``CLI_SEEDS_PER_PASSING`` seeds by the CLI; each wrong mutant
runs ``PY_SEEDS_PER_MUTANT`` seed(s) by ``gradcheck`` and ``CLI_SEEDS_PER_MUTANT`` by the CLI.
The seeds rotate through 0-9 from one layer or mutant to the next (the CLI's offset from the
Python path's), so every seed is used on both paths. ``HANDGRAD_MUTATION_SEEDS=10`` runs all
10 seeds on both paths for everything (about 8 minutes), as benchmarks/bench_gradcheck.py
always does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mutation import (
    BASES,
    MUTANTS,
    OPERATORS,
    Base,
    Mutant,
    Verdict,
    check_cli,
    check_python,
    mutant_caught,
    names_right,
    write,
)
from support import run_cli

SEEDS = tuple(range(10))
_ALL = int(os.environ.get("HANDGRAD_MUTATION_SEEDS", "0") or 0)
PY_SEEDS_PER_MUTANT = min(_ALL, 10) if _ALL else 2
CLI_SEEDS_PER_MUTANT = min(_ALL, 10) if _ALL else 1
CLI_SEEDS_PER_PASSING = min(_ALL, 10) if _ALL else 2

WRONG = [m for m in MUTANTS if not m.equivalent]
EQUIVALENT = [m for m in MUTANTS if m.equivalent]


def _seeds(index: int, count: int, offset: int = 0) -> tuple[int, ...]:
    """``count`` of the seeds 0-9 for the ``index``-th mutant, rotating from one to the next."""
    return tuple((index * count + offset + k) % 10 for k in range(count))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mutants")


def _base_file(folder: Path, base: Base) -> Path:
    return write(folder, f"base__{base.slug}", base.source)


def _mutant_file(folder: Path, m: Mutant) -> Path:
    return write(folder, m.slug, m.source)


def _line(path: str, seed: int, v: Verdict) -> str:
    return f"  seed {seed} {path}: status {v.status}, {v.summary}"


# ------------------------------------------------------------------------------ catalogue


def test_catalogue_is_generated_and_large_enough() -> None:
    assert len(MUTANTS) >= 60
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    by_op = {op.name: [m for m in MUTANTS if m.op is op] for op in OPERATORS}
    assert all(by_op.values()), [name for name, ms in by_op.items() if not ms]
    assert {m.base.name for m in MUTANTS} == {b.name for b in BASES}
    # `>` -> `>=` is equivalent on an input, not on a ReLU's output (exact zeros)
    or_equal = {m.base.name: m.equivalent for m in by_op["or_equal_mask"]}
    assert or_equal["hg.ReLU"] and not or_equal["hg.ReLUOut"]
    for m in WRONG:
        assert m.source != m.base.source
        assert m.expected is None or m.expected, f"{m.name} reaches no checked tensor"


# -------------------------------------------------------------------------- correct layers


@pytest.mark.parametrize("index", range(len(BASES)), ids=[b.name for b in BASES])
def test_correct_layer_passes(index: int, folder: Path) -> None:
    base = BASES[index]
    path = _base_file(folder, base)
    wrong = []
    for seed in SEEDS:
        v = check_python(path, base, seed)
        if not (v.ok and v.status == 0):
            wrong.append(_line("gradcheck", seed, v))
        elif base.ignores_out_g and not any("ignores out.g" in n for n in v.notes):
            wrong.append(f"  seed {seed} gradcheck: no note 'ignores out.g' in {v.notes}")
    for seed in _seeds(index, CLI_SEEDS_PER_PASSING, offset=5):
        c = check_cli(run_cli, path, base, seed)
        if not (c.ok and c.status == 0):
            wrong.append(_line("CLI", seed, c))
    assert not wrong, f"false alarm on the correct {base.name}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("index", range(len(EQUIVALENT)), ids=[m.name for m in EQUIVALENT])
def test_equivalent_mutant_passes(index: int, folder: Path) -> None:
    m = EQUIVALENT[index]
    path = _mutant_file(folder, m)
    wrong = []
    for seed in SEEDS:
        v = check_python(path, m.base, seed)
        if not (v.ok and v.status == 0):
            wrong.append(_line("gradcheck", seed, v))
        elif m.op.name == "ignore_out_g" and not any("ignores out.g" in n for n in v.notes):
            wrong.append(f"  seed {seed} gradcheck: no note 'ignores out.g' in {v.notes}")
    for seed in _seeds(index, CLI_SEEDS_PER_PASSING, offset=5):
        c = check_cli(run_cli, path, m.base, seed)
        if not (c.ok and c.status == 0):
            wrong.append(_line("CLI", seed, c))
    assert not wrong, f"false alarm on {m.name} ({m.before} -> {m.after}):\n" + "\n".join(wrong)


# -------------------------------------------------------------------------------- mutants


@pytest.mark.parametrize("index", range(len(WRONG)), ids=[m.name for m in WRONG])
def test_mutant_is_caught(index: int, folder: Path) -> None:
    m = WRONG[index]
    path = _mutant_file(folder, m)
    wrong = []
    for seed in _seeds(index, PY_SEEDS_PER_MUTANT):
        v = check_python(path, m.base, seed)
        if not mutant_caught(v):
            wrong.append(_line("gradcheck missed it", seed, v))
            continue
        if not names_right(m, v, cli=False):
            wrong.append(
                f"  seed {seed} gradcheck named {sorted(v.names)}, expected some of "
                f"{sorted(m.expected or ())}: {v.summary}"
            )
        if m.hint and m.hint not in v.summary:
            wrong.append(f"  seed {seed} gradcheck: no hint {m.hint!r} in: {v.summary}")
    for seed in _seeds(index, CLI_SEEDS_PER_MUTANT, offset=5):
        c = check_cli(run_cli, path, m.base, seed, m.expected or frozenset())
        if not mutant_caught(c):
            wrong.append(_line("CLI missed it", seed, c))
        elif not names_right(m, c, cli=True):
            wrong.append(
                f"  seed {seed} CLI: none of {sorted(m.expected or ())} named: {c.summary}"
            )
    assert not wrong, f"{m.name}: {m.before}  ->  {m.after}\n" + "\n".join(wrong)
