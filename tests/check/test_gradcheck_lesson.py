"""The lesson's own classes, as written, under the checker (issue 13's acceptance).

tests/lesson_layers/ holds the lesson's layer cells verbatim: the first classes (``__call__``
keeps ``self.inp``/``self.out``, ``backward()`` reads ``self.out.g``) and the versions on the
lesson's own ``Module`` base. Each passes ``gradcheck`` and ``handgrad check`` for seeds 0-9;
each with one realistic bug fails on both paths, for every seed, naming the right tensor.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

from handgrad.check import CheckReport, gradcheck

from support import run_cli

LAYERS = Path(__file__).parent / "lesson_layers"
LESSON = Path(__file__).parents[3] / "shared" / "lesson" / "03_backprop.txt"
SEEDS = range(10)
FILES = {"early": LAYERS / "early.py", "base": LAYERS / "module_base.py"}

# (file, class, text in the lesson, the bug, the tensor the report must name, words of the
# cause). A name of None marks a change that is not a bug: it must pass.
BUGS = [
    ("early", "Lin", "self.w.g = self.inp.t() @ self.out.g",
     "self.w.g = self.out.g.t() @ self.inp", "w", "transposed"),
    ("early", "Lin", "        self.b.g = self.out.g.sum(0)\n", "", "b", "no gradient"),
    ("early", "Lin", "self.b.g = self.out.g.sum(0)", "self.b.g = self.out.g.mean(0)", "b",
     "factor of 1/8"),
    ("early", "Lin", "self.b.g = self.out.g.sum(0)", "self.b.g = self.out.g", "b",
     "not summed over the batch"),
    ("early", "Lin", "self.inp.g = self.out.g @ self.w.t()",
     "self.inp.g = -self.out.g @ self.w.t()", "inp", "wrong sign"),
    ("early", "Relu", "(self.inp>0).float() * self.out.g", "(self.inp<0).float() * self.out.g",
     "inp", ""),
    ("early", "Relu", "(self.inp>0).float() * self.out.g", "(self.inp>0).float()", "inp",
     "ignores out.g"),
    ("early", "Relu", "self.inp.g = (self.inp>0).float() * self.out.g",
     "self.out.g.mul_((self.inp>0).float()); self.inp.g = self.out.g", "out.g", "wrote into"),
    ("early", "Mse", "self.inp.g = 2. *", "self.inp.g = 1. *", "inp", "factor of 1/2"),
    ("early", "Mse", "/ self.targ.shape[0]", "", "inp", "factor of 8"),
    ("early", "Mse", "self.inp.g = 2. *", "self.inp.g += 2. *", "inp", "do not use +="),
    ("base", "Lin", "self.w.g = inp.t() @ self.out.g", "self.w.g = self.out.g.t() @ inp", "w",
     "transposed"),
    ("base", "Lin", "self.b.g = self.out.g.sum(0)", "self.b.g = self.out.g[0]", "b", ""),
    ("base", "Relu", "(inp>0).float() * out.g", "(inp>=0).float() * out.g", None, ""),
    ("base", "Relu", "inp.g = (inp>0).float() * out.g",
     "g = (inp>0).float() * out.g; g[::2] = float('nan'); inp.g = g", "inp", "NaN"),
    ("base", "Mse", "inp.g = 2*", "inp.g = out.g*2*", None, ""),
    ("base", "Mse", "/ targ.shape[0]", "/ (targ.shape[0]-1)", "inp", "factor"),
]  # fmt: skip


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lesson_{path.stem}_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python(module: ModuleType, cls: str, seed: int, square: bool) -> CheckReport:
    """gradcheck on the lesson's float32 tensors; odd seeds check a layer already used once
    (it holds a stale ``self.inp``/``self.out`` that must not shadow the real input)."""
    g = torch.Generator().manual_seed(100 + seed)
    n_out = 4 if square else 3
    if cls == "Lin":
        layer = module.Lin(torch.randn(4, n_out, generator=g), torch.randn(n_out, generator=g))
        inputs: tuple[torch.Tensor, ...] = (torch.randn(8, 4, generator=g),)
    elif cls == "Relu":
        layer, inputs = module.Relu(), (torch.randn(8, 4, generator=g),)
    else:
        layer = module.Mse()
        inputs = (torch.randn(8, 1, generator=g), torch.randn(8, generator=g))
    if seed % 2:
        layer(*(x.clone() for x in inputs))
    return gradcheck(layer, *inputs, seed=seed)


def _cli(path: Path, cls: str, seed: int, square: bool) -> tuple[int, str]:
    args = {
        "Lin": ["--args", f"randn(4,{4 if square else 3}), zeros({4 if square else 3})",
                "--shape", "8,4"],
        "Relu": ["--shape", "8,4"],
        "Mse": ["--shape", "8,1", "--shape", "8"],
    }[cls]  # fmt: skip
    r = run_cli("check", f"{path}:{cls}", *args, "--seed", str(seed))
    return r.status, r.out + r.err


def _named(report: CheckReport) -> set[str]:
    names = {t.name for t in report.failures}
    for p in report.problems:
        names |= set(re.findall(r"bwd wrote into ([\w.]+)", p))
    return names


def test_fixtures_are_the_lessons_text() -> None:
    if not LESSON.exists():
        pytest.skip(f"{LESSON} is not in this checkout")
    lesson = "\n".join(line.rstrip() for line in LESSON.read_text().splitlines())
    for path in FILES.values():
        code = path.read_text().split("\nclass ", 1)[1]
        for block in ("class " + code).split("\nclass "):
            block = block if block.startswith("class ") else "class " + block
            text = "\n".join(line.rstrip() for line in block.strip().splitlines())
            assert text in lesson, f"{path.name}: not the lesson's text:\n{text}"


@pytest.mark.parametrize("square", [True, False], ids=["square", "rect"])
@pytest.mark.parametrize("kind", ["early", "base"])
@pytest.mark.parametrize("cls", ["Lin", "Relu", "Mse"])
def test_lesson_classes_pass(cls: str, kind: str, square: bool) -> None:
    if cls != "Lin" and not square:
        pytest.skip("only Lin has a shape to choose")
    module = _load(FILES[kind])
    for seed in SEEDS:
        report = _python(module, cls, seed, square)
        assert report.ok and report.status == 0, f"seed {seed}\n{report}"
        expected = {"Lin": {"inp", "w", "b"}, "Relu": {"inp"}, "Mse": {"inp"}}[cls]
        assert {t.name for t in report.tensors} == expected, str(report)
        status, out = _cli(FILES[kind], cls, seed, square)
        assert status == 0, f"seed {seed}: {out}"
    if cls == "Mse":  # the lesson's loss ignores out.g: right as the last layer, and said so
        assert report.loss and "ignores out.g" in report.summary()
        assert "OK as a loss" in out and "ignores out.g" in out


@pytest.mark.parametrize(("kind", "cls", "old", "new", "name", "cause"), BUGS)
def test_lesson_bug_is_caught(
    tmp_path: Path, kind: str, cls: str, old: str, new: str, name: str | None, cause: str
) -> None:
    text = FILES[kind].read_text()
    assert old in text
    path = tmp_path / f"{kind}_{cls}.py"
    path.write_text(text.replace(old, new, 1))
    module = _load(path)
    wrong = []
    for seed in SEEDS:
        report = _python(module, cls, seed, square=True)
        status, out = _cli(path, cls, seed, square=True)
        if name is None:  # not a bug
            if not report.ok or status != 0:
                wrong.append(f"seed {seed}: false alarm\n{report}\n{out}")
            continue
        if report.status != 1 or _named(report) != {name} or cause not in report.summary():
            wrong.append(f"seed {seed} gradcheck: {report.summary()}")
        said = f"{name}: " in out or f"into {name}" in out
        if status != 1 or not said or cause not in out:
            wrong.append(f"seed {seed} CLI (exit {status}): {out}")
    assert not wrong, f"{cls}: {old.strip()!r} -> {new.strip()!r}\n" + "\n".join(wrong)
