"""The checker against a corpus of layers nobody on this project wrote (tests/outsiders/).

Every layer there is written the way users bring them: the fast.ai lesson's early classes
(``self.inp``/``self.out``, ``backward()``), classes on the lesson's own plain ``Module`` base,
CS231n ``*_forward``/``*_backward`` pairs (one in numpy), an llm.c LayerNorm, micrograd-style
ops with ``_backward`` closures, handgrad ``Module`` subclasses, losses, and composites (plain
objects holding lists of layers, residual blocks, weight tying). Each correct layer has a twin
with one realistic bug. ``CASES`` says, for each, which tensors must be checked and which must
be named as failing (or that it must pass).

Each case runs through both paths: ``gradcheck`` with seeds 0-9 (inputs and constructor
tensors drawn here from a seeded generator, float32 like a user's), and the CLI in-process with
one seed per case, rotating through 0-9 over the corpus (the CLI shares the core, so one seed
each checks loading, --args/--shape parsing and the exit status). Measured on the 2-core
development machine: about 20 s for the whole file (it was 77 s while the checker reseeded with
``torch.manual_seed``, which queues a deferred CUDA seeding with a stack trace on every call; the
checker now reseeds the CPU generator directly).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from handgrad.check import gradcheck

from support import run_cli

HERE = Path(__file__).parent / "outsiders"
PY_SEEDS = range(10)
PASS = "pass"
WROTE = "wrote into"


@dataclass(frozen=True)
class Case:
    file: str
    cls: str
    args: str  # the CLI's --args
    shapes: tuple[str, ...]  # the CLI's --shape, one per input ("8,4" float, "8:5" labels)
    expect: str | frozenset[str]  # PASS, or the names that must be reported as failing
    grads: tuple[str, ...]  # names that must be among the checked tensors
    note: str | None = None  # must appear in report.notes (a passing case)
    hint: str | None = None  # must appear in the report of a failing case

    @property
    def id(self) -> str:
        return f"{self.file}:{self.cls}"


def ok(file: str, cls: str, args: str, shapes: str, grads: str, note: str | None = None) -> Case:
    return Case(file, cls, args, tuple(shapes.split()), PASS, tuple(grads.split()), note)


def bad(
    file: str, cls: str, args: str, shapes: str, grads: str, failing: str, hint: str | None = None
) -> Case:
    expect = frozenset(failing.split())
    return Case(file, cls, args, tuple(shapes.split()), expect, tuple(grads.split()), None, hint)


E, M, C, L = "lesson_early.py", "lesson_module.py", "cs231n.py", "llmc_layernorm.py"
G, H, S, X = "micrograd_ops.py", "hg_modules.py", "losses.py", "composites.py"
W43, W44, MLP_ARGS = "randn(4,3), zeros(3)", "randn(4,4), randn(4)", "randn(4,6), randn(6)"
AFF, SS = "{'w': randn(4,3), 'b': randn(3)}", "{'gamma': randn(4), 'beta': randn(4)}"
TRANSPOSED, FACTOR, NO_GRAD = "looks transposed", "off by a factor of", "set no gradient"
SIGN, NONFINITE = "wrong sign", "non-finite"
IGNORES, FD_ONLY = "ignores out.g", "finite differences only"
L1 = "layers.0.w layers.0.b layers.2.w layers.2.b"
WB, GB, PWB, PGB = "w b", "gamma beta", "params.w params.b", "params.gamma params.beta"

# fmt: off
CASES = [
    # --- the lesson's early classes: self.inp / self.out, backward() with no argument
    ok(E, "Relu", "", "8,4", "inp"),
    ok(E, "ReluGe", "", "8,4", "inp"),
    ok(E, "ReluNewTensor", "", "8,4", "inp"),
    bad(E, "ReluWrongMask", "", "8,4", "inp", "inp"),
    bad(E, "ReluInplaceOutG", "", "8,4", "inp", "", WROTE + " out.g"),
    ok(E, "Lin", W43, "8,4", "inp w b"),
    ok(E, "LinKeepsInit", "randn(4,3), randn(3)", "8,4", "inp w b"),
    bad(E, "LinTransposedW", W44, "8,4", "inp w b", "w", TRANSPOSED),
    bad(E, "LinBiasMean", W43, "8,4", "inp w b", "b", FACTOR),
    bad(E, "LinNoBiasGrad", W43, "8,4", "inp w b", "b", NO_GRAD),
    bad(E, "LinSingleExample", W43, "8,4", "inp w b", "w"),
    ok(E, "SquaredError", "", "8,1 8", "inp", IGNORES),
    bad(E, "SquaredErrorNoMean", "", "8,1 8", "inp", "inp"),
    ok(E, "MLP", f"{MLP_ARGS}, randn(6,3), randn(3)", "8,4", "x " + L1),
    bad(E, "MLPTransposed", f"{W44}, randn(4,3), randn(3)", "8,4", "x " + L1, "layers.0.w"),
    # --- the lesson's own plain Module base: self.args / self.out, bwd(out, *args)
    ok(M, "Relu", "", "8,4", "inp"),
    bad(M, "ReluMaskOnGrad", "", "8,4", "inp", "inp"),
    ok(M, "LeakyRelu", "0.1", "8,4", "inp"),
    bad(M, "LeakyReluNoSlope", "0.1", "8,4", "inp", "inp"),
    ok(M, "Lin", W43, "8,4", "inp w b"),
    bad(M, "LinBiasNotSummed", W43, "8,4", "inp w b", "b"),
    ok(M, "LinList", f"[{W44}]", "8,4", "inp params.0 params.1"),
    bad(M, "LinListNoTranspose", f"[{W44}]", "8,4", "inp params.0 params.1", "inp"),
    ok(M, "Affine", AFF, "8,4", "inp " + PWB),
    bad(M, "AffineExtraMean", AFF, "8,4", "inp " + PWB, "params.w", FACTOR),
    ok(M, "ScaleShift", SS, "8,4", "inp " + PGB),
    bad(M, "ScaleShiftNoBeta", SS, "8,4", "inp " + PGB, "params.beta", NO_GRAD),
    ok(M, "Sigmoid", "", "8,4", "inp"),
    bad(M, "SigmoidNoChain", "", "8,4", "inp", "inp"),
    ok(M, "Tanh", "", "8,4", "inp"),
    bad(M, "TanhUsesInput", "", "8,4", "inp", "inp"),
    ok(M, "Softmax", "", "6,5", "inp"),
    bad(M, "SoftmaxNoDiagonal", "", "6,5", "inp", "inp"),
    ok(M, "Embedding", "randn(5,3)", "8:5", "w"),
    bad(M, "EmbeddingLosesRepeats", "randn(5,3)", "8:5", "w", "w"),
    # --- CS231n: *_forward -> (out, cache), *_backward(dout, cache); backward(dout) wrappers
    ok(C, "Affine", "randn(6,5), randn(5)", "4,2,3", "x w b", FD_ONLY),
    bad(C, "AffineNoTranspose", "randn(6,6), randn(6)", "4,2,3", "x w b", "x"),
    ok(C, "ReLU", "", "8,4", "x"),
    bad(C, "ReLUInplace", "", "8,4", "x", "", WROTE + " out.g"),
    ok(C, "SoftmaxLoss", "", "8,5 8:5", "x"),
    bad(C, "SoftmaxLossNoMean", "", "8,5 8:5", "x", "x", FACTOR),
    ok(C, "SvmLoss", "", "8,5 8:5", "x"),
    bad(C, "SvmLossNoCorrectClass", "", "8,5 8:5", "x", "x"),
    ok(C, "BatchNorm", "randn(4), randn(4)", "8,4", "x " + GB),
    bad(C, "BatchNormUnbiasedVar", "randn(4), randn(4)", "8,4", "x " + GB, "x"),
    ok(C, "LayerNorm", "randn(5), randn(5)", "6,5", "x " + GB),
    bad(C, "LayerNormGammaUsesX", "randn(5), randn(5)", "6,5", "x " + GB, "gamma"),
    # --- llm.c LayerNorm on (B, T, C)
    ok(L, "LayerNorm", "randn(4), randn(4)", "2,3,4", "x " + WB),
    bad(L, "LayerNormBatchOne", "randn(4), randn(4)", "2,3,4", "x " + WB, "w"),
    bad(L, "LayerNormNoProjection", "randn(4), randn(4)", "2,3,4", "x " + WB, "x"),
    # --- micrograd-style ops: a _backward closure over the inputs
    ok(G, "Mul", "", "8,4 8,4", "a b"),
    bad(G, "MulWrongInput", "", "8,4 8,4", "a b", "a b"),
    ok(G, "Add", "", "8,4 4", "a b"),
    bad(G, "AddNotSummed", "", "8,4 4", "a b", "b"),
    ok(G, "Sub", "", "8,4 8,4", "a b"),
    bad(G, "SubSignLost", "", "8,4 8,4", "a b", "b", SIGN),
    ok(G, "Max", "", "8,4 8,4", "a b"),
    bad(G, "MaxSameMask", "", "8,4 8,4", "a b", "b"),
    ok(G, "Pow", "3", "8,4", "a"),
    bad(G, "PowOffByOne", "3", "8,4", "a", "a"),
    ok(G, "Tanh", "", "8,4", "a"),
    bad(G, "TanhWrongSign", "", "8,4", "a", "a", SIGN),
    ok(G, "Exp", "", "8,4", "a"),
    bad(G, "ExpPlusEquals", "", "8,4", "a", "a", "+="),
    ok(G, "Softplus", "", "8,4", "a"),
    bad(G, "SoftplusNoChain", "", "8,4", "a", "a"),
    ok(G, "Sigmoid", "", "8,4", "a"),
    bad(G, "SigmoidOfOutput", "", "8,4", "a", "a"),
    ok(G, "SqrtAbs", "", "8,4", "a"),
    bad(G, "SqrtAbsForgotAbs", "", "8,4", "a", "a", NONFINITE),
    # --- handgrad.Module subclasses
    ok(H, "Linear", "4, 3", "8,4", "x w b"),
    bad(H, "LinearTransposed", "4, 4", "8,4", "x w b", "w", TRANSPOSED),
    ok(H, "LayerNorm", "5", "6,5", "x " + GB),
    bad(H, "LayerNormBesselBackward", "5", "6,5", "x " + GB, "x gamma"),
    ok(H, "BatchNorm", "4", "8,4", "x " + GB),
    bad(H, "BatchNormSumNotMean", "4", "8,4", "x " + GB, "x"),
    ok(H, "Gate", "", "8,4 8,4", "x"),
    bad(H, "GateForgetsMask", "", "8,4 8,4", "x", "x"),
    ok(H, "Huber", "1.0", "8,4 8,4", "inp"),
    bad(H, "HuberWrongSign", "1.0", "8,4 8,4", "inp", "inp"),
    ok(H, "CrossEntropy", "", "8,5 8:5", "inp"),
    bad(H, "CrossEntropyNoMean", "", "8,5 8:5", "inp", "inp", FACTOR),
    ok(H, "MSE", "", "8,4 8,4", "inp"),
    bad(H, "MSERowsOnly", "", "8,4 8,4", "inp", "inp", FACTOR),
    ok(H, "LogSoftmax", "", "6,5", "x"),
    bad(H, "LogSoftmaxNoSum", "", "6,5", "x", "x"),
    ok(H, "Residual", "4", "8,4", "x lin.w lin.b"),
    bad(H, "ResidualNoSkip", "4", "8,4", "x lin.w lin.b", "x"),
    ok(H, "Tied", "4", "8,4", "x lin.w lin.b"),
    ok(H, "MLP", "4, 6, 3", "8,4", "x l1.w l1.b l2.w l2.b"),
    bad(H, "MLPFirstNoBias", "4, 6, 3", "8,4", "x l1.w l1.b l2.w l2.b", "l1.b", NO_GRAD),
    # --- losses on the lesson's Module base (imported from the file next to them)
    ok(S, "Mse", "", "8,1 8", "inp", IGNORES),
    ok(S, "BCEWithLogits", "", "8,3 8,3", "inp"),
    bad(S, "BCEWithLogitsFlipped", "", "8,3 8,3", "inp", "inp", SIGN),
    ok(S, "Huber", "", "8,4 8,4", "inp"),
    bad(S, "HuberNoClip", "", "8,4 8,4", "inp", "inp"),
    ok(S, "CrossEntropy", "", "8,5 8:5", "inp"),
    bad(S, "CrossEntropyNoOneHot", "", "8,5 8:5", "inp", "inp"),
    # --- composites: plain objects holding layers
    ok(X, "Model", f"{MLP_ARGS}, randn(6,1), randn(1)", "8,4 8", "x " + L1, IGNORES),
    bad(X, "ModelTransposed", f"{W44}, randn(4,1), randn(1)", "8,4 8", "x " + L1, "layers.0.w"),
    ok(X, "Residual", W44, "8,4", "x lin.w lin.b"),
    bad(X, "ResidualNoSkip", W44, "8,4", "x lin.w lin.b", "x"),
    bad(X, "ResidualInplaceRelu", W44, "8,4", "x lin.w lin.b", "x", WROTE + " out.g"),
    ok(X, "Tied", W44, "8,4", "x w b"),
    bad(X, "TiedOverwrites", W44, "8,4", "x w b", "w"),
    bad(X, "TiedTwice", W44, "8,4", "x lin.w lin.b", "x lin.w lin.b"),
]
# fmt: on


# ------------------------------------------------------------------ building a case by hand
def _load(file: str) -> Any:
    """Import tests/outsiders/FILE as a user's script would be (its folder on sys.path)."""
    name = f"outsider_{Path(file).stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(HERE))
    sys.modules[name] = mod
    return mod


def _ctor_args(text: str, gen: torch.Generator) -> tuple[list[Any], dict[str, Any]]:
    """The --args string evaluated here (not by the CLI's parser), tensors float32."""

    def shape(vals: list[Any]) -> tuple[int, ...]:
        return (
            tuple(vals[0]) if len(vals) == 1 and isinstance(vals[0], tuple | list) else tuple(vals)
        )

    makers = {
        "randn": lambda *a: torch.randn(shape(list(a)), generator=gen),
        "rand": lambda *a: torch.rand(shape(list(a)), generator=gen),
        "zeros": lambda *a: torch.zeros(shape(list(a))),
        "ones": lambda *a: torch.ones(shape(list(a))),
        "eye": lambda n: torch.eye(n),
        "full": lambda s, v: torch.full(shape([s]), float(v)),
        "arange": lambda n: torch.arange(n, dtype=torch.float32),
        "tensor": lambda data: torch.tensor(data, dtype=torch.float32),
    }

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return makers[node.func.id](*[ev(a) for a in node.args])
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {ev(k): ev(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
        return ast.literal_eval(node)

    if not text.strip():
        return [], {}
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    return [ev(a) for a in call.args], {k.arg: ev(k.value) for k in call.keywords if k.arg}


def _inputs(shapes: tuple[str, ...], gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for spec in shapes:
        dims, _, classes = spec.partition(":")
        shape = tuple(int(d) for d in dims.split(","))
        if classes:
            out.append(torch.randint(0, int(classes), shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen))
    return out


def build(case: Case, seed: int) -> tuple[Any, list[torch.Tensor]]:
    cls = getattr(_load(case.file), case.cls)
    gen = torch.Generator().manual_seed(1000 + seed)
    torch.manual_seed(seed)  # handgrad layers draw their own initial weights
    pos, kw = _ctor_args(case.args, gen)
    return cls(*pos, **kw), _inputs(case.shapes, gen)


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from a user's object (attributes, lists, tuples, dicts)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        items: Any = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = [v for k, v in vars(obj).items() if not k.startswith("_")]
    else:
        return []
    return [t for item in items for t in _tensors(item, seen)]


# ------------------------------------------------------------------------------ the verdicts
def _python_problem(case: Case, seed: int, tried_first: bool = False) -> str | None:
    """None when gradcheck's report agrees with the case, else what went wrong. With
    ``tried_first`` the user has called the layer once before checking it (so it holds that
    call's ``inp``/``out``)."""
    layer, inputs = build(case, seed)
    if tried_first:
        layer(*[x.clone() for x in inputs])
    mine = [*inputs, *_tensors(layer)]
    before = [t.clone() for t in mine]
    try:
        report = gradcheck(layer, *inputs, seed=seed)
    except (Exception, SystemExit) as exc:  # a crash is a verdict too
        return f"gradcheck raised {type(exc).__name__}: {exc}"
    for t, old in zip(mine, before, strict=True):
        if t.dtype != old.dtype or not torch.equal(t, old) or getattr(t, "g", None) is not None:
            return f"the user's tensor {tuple(t.shape)} {t.dtype} was changed (or given a .g)"
    checked = {t.name for t in report.tensors}
    failing = {t.name: t.problem or "" for t in report.failures}
    text = f"{report}\n{getattr(report, 'notes', '')}"
    summary = report.summary()
    if missing := set(case.grads) - checked:
        return f"not checked: {sorted(missing)}; {summary}"
    if case.expect == PASS:
        if not report.ok or report.status != 0:
            return f"false alarm: {summary}"
        if case.note and not any(case.note in n for n in report.notes):
            return f"passed without a note containing {case.note!r}: {report.notes}"
        return None
    if report.ok:
        return f"false pass: {summary}"
    if lost := set(case.expect) - set(failing):
        return f"false pass of {sorted(lost)}: {summary}"
    extra = {n for n, p in failing.items() if n not in case.expect and WROTE not in p}
    if extra:
        return f"false alarm on {sorted(extra)}: {summary}"
    if case.hint and case.hint not in text:
        return f"no {case.hint!r} in the report: {summary}"
    if report.status != 1:
        return f"status {report.status}, expected 1: {summary}"
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_python_verdict(case: Case) -> None:
    problems = [f"seed {s}: {p}" for s in PY_SEEDS if (p := _python_problem(case, s))]
    assert not problems, "\n".join(problems)


TRIED_FIRST = [
    c
    for c in CASES
    if c.id
    in {
        f"{E}:Lin",
        f"{E}:ReluWrongMask",
        f"{E}:MLP",
        f"{M}:LinListNoTranspose",
        f"{C}:Affine",
        f"{C}:AffineNoTranspose",
    }
]


@pytest.mark.parametrize("case", TRIED_FIRST, ids=lambda c: c.id)
def test_python_verdict_after_a_first_call(case: Case) -> None:
    """A layer the user already called once holds that call's tensors (``self.inp``,
    ``self.x``, ``self.out``): they are activations, not weights, and must not hide the input
    of the same name from the check."""
    problems = [f"seed {s}: {p}" for s in range(3) if (p := _python_problem(case, s, True))]
    assert not problems, "\n".join(problems)


def _named(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}:", text) is not None


def _cli_problem(case: Case, seed: int) -> str | None:
    argv = ["check", f"{HERE / case.file}:{case.cls}", "--seed", str(seed)]
    if case.args:
        argv += ["--args", case.args]
    for spec in case.shapes:
        argv += ["--shape", spec]
    res = run_cli(*argv)
    last = (res.out.strip().splitlines() or [""])[-1]
    if "Traceback" in res.out + res.err:
        return f"traceback (exit {res.status}): {res.err[-300:]}"
    if case.expect == PASS:
        return None if res.status == 0 else f"exit {res.status}: {res.err.strip()} {last}"
    if res.status != 1:
        return f"exit {res.status}, expected 1: {res.err.strip()} {last}"
    if unnamed := [n for n in sorted(case.expect) if not _named(n, res.out)]:
        return f"exit 1 but {unnamed} not named in stdout: {last}"
    if case.hint and case.hint not in res.out:
        return f"no {case.hint!r} in stdout: {last}"
    return None


@pytest.mark.parametrize(
    ("case", "seed"), [(c, i % 10) for i, c in enumerate(CASES)], ids=lambda v: getattr(v, "id", v)
)
def test_cli_verdict(case: Case, seed: int) -> None:
    problem = _cli_problem(case, seed)
    assert problem is None, f"seed {seed}: {problem}"


def test_corpus_size() -> None:
    correct = [c for c in CASES if c.expect == PASS]
    assert len(correct) >= 40 and len(CASES) - len(correct) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
