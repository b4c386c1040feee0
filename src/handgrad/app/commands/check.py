"""``handgrad check``: gradient-check every built-in layer, or a user's own layer.

    handgrad check                                    # every built-in case, as a table
    handgrad check my_layers.py:Swish --shape 8,16    # a user's class
    handgrad check my_layers.py:Dense --args "16, 4, bias=False" --shape 8,16
    handgrad check lesson.py:Lin --args "randn(4,3), zeros(3)" --shape 8,4
    handgrad check my_loss.py:Hinge --shape 8,10 --shape 8:10   # labels in [0, 10)

The class may be a handgrad Module or a plain class written as in the lesson (__call__ and
backward()). Every floating-point tensor it holds is checked, plain tensors included.

exit status:
  0  every gradient is right
  1  a gradient is wrong (or the backward raised, or wrote into out.g, an input or a weight)
  2  bad usage or input: a file, class, --args or --shape that does not work, a forward that
     raises or is not repeatable
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table

from handgrad.app.ui import make_console
from handgrad.check import CANNOT_CHECK, OK, WRONG, CheckReport, gradcheck
from handgrad.check.cases import CASES
from handgrad.check.usercode import UserCodeError, call_user
from handgrad.errors import HandgradError
from handgrad.nn.module import Module

# Tensor constructors --args may call, with literal arguments only (nothing is evaluated).
_CONSTRUCTORS = {
    "randn": lambda g, *s: torch.randn(*_shape(s), generator=g),
    "rand": lambda g, *s: torch.rand(*_shape(s), generator=g),
    "zeros": lambda g, *s: torch.zeros(*_shape(s)),
    "ones": lambda g, *s: torch.ones(*_shape(s)),
    "eye": lambda g, n, m=None: torch.eye(n, m if m is not None else n),
    "full": lambda g, shape, value: torch.full(_shape((shape,)), float(value)),
    "arange": lambda g, *a: torch.arange(*a, dtype=torch.float32),
    "linspace": lambda g, a, b, n: torch.linspace(a, b, n),
    "tensor": lambda g, data: torch.tensor(data, dtype=torch.float32),
}


def add(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check hand-written gradients against autograd and finite differences",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        nargs="?",
        help="FILE.py:ClassName of a layer to check (default: every built-in layer)",
    )
    p.add_argument(
        "--args",
        default="",
        help='constructor arguments: Python literals and tensors, e.g. "16, 4, bias=False" or '
        '"randn(4,3), zeros(3)" (randn, rand, zeros, ones, eye, full, arange, linspace, tensor)',
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="SHAPE",
        help="an input's shape, e.g. 8,16 (float) or 8:10 (integer labels in "
        "[0, 10)); repeat for each input",
    )
    p.add_argument(
        "--range",
        metavar="LO,HI",
        help="draw float inputs uniformly from [LO, HI], e.g. 0.1,2 for log or sqrt "
        "(default: a standard normal)",
    )
    p.add_argument(
        "--no-grad",
        action="append",
        default=[],
        metavar="NAME",
        help="an input or tensor not to differentiate (a target, a constant); repeatable",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the inputs, --args tensors and the checker's upstream gradients (each "
        "from a stream of its own)",
    )
    p.add_argument(
        "--samples", type=int, default=24, help="elements per tensor checked by finite differences"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    start = time.perf_counter()
    if args.target:
        reports = [(args.target, _check_user_layer(args))]
    else:
        g = torch.Generator().manual_seed(args.seed)
        reports = [
            (
                c.name,
                gradcheck(
                    c.make(g),
                    *c.inputs(g),
                    reference=c.reference,
                    seed=args.seed,
                    samples=args.samples,
                ),
            )
            for c in CASES
        ]
    console.print(_table(reports))
    for name, r in reports:
        for note in r.notes:
            if note not in r.summary():
                console.print(escape(f"note: {name}: {note}"))
    failed = [(name, r) for name, r in reports if not r.ok]
    for name, r in failed:
        console.print(f"[red]FAIL[/red] {escape(name)}: {escape(r.summary())}")
    if args.target and not failed:
        console.print(escape(reports[0][1].summary()))
    total = sum(len(r.tensors) for _, r in reports)
    console.print(
        f"{len(reports) - len(failed)}/{len(reports)} modules passed ({total} gradients) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if any(r.status != CANNOT_CHECK for _, r in failed):
        return WRONG
    return CANNOT_CHECK if failed else OK


def _table(reports: list[tuple[str, CheckReport]]) -> Table:
    """One row per case (its forward error), then one per tensor (indented, with its shape):
    full names in 80 columns. What is wrong is said below the table (the FAIL lines)."""
    t = Table(title="hand-written gradients: relative error vs autograd and finite differences")
    t.add_column("case / tensor  shape", no_wrap=True)
    for col in ("autograd", "finite\ndiff", "forward\nvs torch"):
        t.add_column(col, justify="right")
    t.add_column("ok")
    no = "[red]NO[/red]"
    for name, r in reports:
        fwd = "-" if r.forward_error is None else f"{r.forward_error:.1e}"
        t.add_row(escape(name), "", "", fwd, no if r.problems else "")
        for c in r.tensors:
            t.add_row(
                escape(f"  {c.name}  {c.shape}"),
                "-" if c.autograd_rel != c.autograd_rel else f"{c.autograd_rel:.1e}",
                "-" if c.numeric_rel != c.numeric_rel else f"{c.numeric_rel:.1e}",
                "",
                "[green]yes[/green]" if c.ok else no,
                end_section=c is r.tensors[-1],
            )
    return t


def _check_user_layer(args: argparse.Namespace) -> CheckReport:
    path, class_name = _split_target(args.target)
    with _beside(path):
        cls = _load_class(path, class_name)
        g = torch.Generator().manual_seed(args.seed + 1_000_003)  # not the inputs' stream
        pos, kw = _parse_args(args.args, g)
        try:
            layer = call_user(f"{class_name}({args.args})", cls, *pos, **kw)
        except UserCodeError as exc:
            raise HandgradError(f"{exc}; fix --args") from exc
        inputs = _user_inputs(layer, args.shape, args.range, args.seed)
        return gradcheck(
            layer, *inputs, seed=args.seed, samples=args.samples, no_grad=tuple(args.no_grad)
        )


def _split_target(target: str) -> tuple[Path, str]:
    path_text, sep, class_name = target.rpartition(":")
    if not sep or not path_text or not class_name:
        raise HandgradError(f"{target!r}: expected FILE.py:ClassName, e.g. my_layers.py:Swish")
    path = Path(path_text)
    if not path.is_file():
        raise HandgradError(
            f"{path}: no such file; give the path of the .py file that defines the layer"
        )
    return path, class_name


@contextmanager
def _beside(path: Path) -> Any:
    """The file's folder first on ``sys.path`` while it is imported and checked, as
    ``python FILE`` has it (so ``from my_helpers import ...`` next to it works)."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _is_layer_class(v: Any) -> bool:
    return isinstance(v, type) and (
        (issubclass(v, Module) and v is not Module)
        or (callable(getattr(v, "backward", None)) and "__call__" in _defined(v))
    )


def _defined(cls: type) -> set[str]:
    """Names defined by ``cls`` or its bases other than ``object``."""
    return {n for c in cls.__mro__ if c is not object for n in vars(c)}


def _load_class(path: Path, class_name: str) -> type:
    spec = importlib.util.spec_from_file_location(f"handgrad_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise HandgradError(f"{path}: cannot be imported as Python; give a .py file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        call_user("importing it", spec.loader.exec_module, mod)
    except UserCodeError as exc:
        raise HandgradError(f"{path}: {exc}") from exc
    cls = getattr(mod, class_name, None)
    if not _is_layer_class(cls):
        found = sorted(
            n
            for n, v in vars(mod).items()
            if _is_layer_class(v) and getattr(v, "__module__", None) == spec.name
        )
        what = "is not a layer class" if cls is not None else "is not defined there"
        raise HandgradError(
            f"{path}: {class_name!r} {what}: a layer is a handgrad Module or a class with "
            f"__call__ and backward() (layers found there: {', '.join(found) or 'none'})"
        )
    assert isinstance(cls, type)
    return cls


def _parse_args(text: str, g: torch.Generator) -> tuple[list[Any], dict[str, Any]]:
    """Parse ``"16, 4, bias=False"`` or ``"randn(4,3), zeros(3)"``: literals and calls of the
    tensor constructors above with literal arguments; nothing else is evaluated."""
    if not text.strip():
        return [], {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError(text)
        pos = [_value(a, g) for a in call.args]
        kw = {k.arg: _value(k.value, g) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError, TypeError, RuntimeError) as exc:
        raise HandgradError(
            f"--args {text!r}: not a list of Python literals and tensor constructors "
            f'(e.g. "16, 4, bias=False" or "randn(4,3), zeros(3)"): {exc}'
        ) from exc
    return pos, kw


def _value(node: ast.expr, g: torch.Generator) -> Any:
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _CONSTRUCTORS or node.keywords:
            raise ValueError(f"{ast.unparse(node)}: only {', '.join(_CONSTRUCTORS)} may be called")
        return _CONSTRUCTORS[name](g, *(ast.literal_eval(a) for a in node.args))
    if isinstance(node, ast.List | ast.Tuple):
        items = [_value(e, g) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        keys = [ast.literal_eval(k) if k is not None else None for k in node.keys]
        return {k: _value(v, g) for k, v in zip(keys, node.values, strict=True)}
    return ast.literal_eval(node)


def _shape(sizes: tuple[Any, ...]) -> tuple[int, ...]:
    """``randn(4, 3)`` and ``randn((4, 3))`` alike."""
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = tuple(sizes[0])
    if not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ValueError(f"sizes must be non-negative integers, got {sizes}")
    return tuple(sizes)


def _user_inputs(
    layer: Any, shapes: list[str], value_range: str | None, seed: int
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if not shapes:
        example = getattr(layer, "example_inputs", None)
        if callable(example):
            try:
                return tuple(call_user("example_inputs()", example))
            except UserCodeError as exc:
                raise HandgradError(str(exc)) from exc
        raise HandgradError(
            f"{type(layer).__name__}: give each input's shape with --shape "
            "(e.g. --shape 8,16), or define example_inputs() on the class"
        )
    lo_hi = _range(value_range)
    inputs = []
    for k, spec in enumerate(shapes):
        dims, _, classes = spec.partition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
            n_classes = int(classes) if classes else 0
        except ValueError as exc:
            raise HandgradError(f"--shape {spec!r}: expected sizes like 8,16 or 8:10") from exc
        if not shape or min(shape) < 1 or (classes and n_classes < 1):
            raise HandgradError(f"--shape {spec!r}: sizes must be positive integers")
        if classes:
            inputs.append(torch.randint(0, n_classes, shape, generator=g))
        elif lo_hi is not None:
            lo, hi = lo_hi
            inputs.append(lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64))
        else:
            # Each input on its own scale, so that no two inputs are interchangeable.
            scale = 1.0 + 0.5 * k
            inputs.append(scale * torch.randn(shape, generator=g, dtype=torch.float64))
    return tuple(inputs)


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise HandgradError(f"--range {text!r}: expected LO,HI, e.g. 0.1,2") from exc
    if not lo < hi:
        raise HandgradError(f"--range {text!r}: LO must be below HI")
    return lo, hi
