"""``handgrad check``: gradient-check every built-in layer, or a user's own layer.

    handgrad check                                  # every built-in case, as a table
    handgrad check my_layers.py:Swish --shape 8,16  # a user's class
    handgrad check my_layers.py:Dense --args "16, 4, bias=False" --shape 8,16
    handgrad check my_loss.py:Hinge --shape 8,10 --shape 8:10   # labels in [0, 10)

Exit status 1, naming every wrong tensor, when a gradient is wrong.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from ..cases import CASES
from ..errors import HandgradError
from ..gradcheck import CheckReport, gradcheck
from ..module import Module
from ..ui import make_console


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
        help='constructor arguments as Python literals, e.g. "16, 4, bias=False"',
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="SHAPE",
        help="an input's shape, e.g. 8,16 (float) or 8:10 (integer labels in "
        "[0, 10)); repeat for each input",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples", type=int, default=24, help="elements per tensor checked by finite differences"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    start = time.perf_counter()
    if args.target:
        module = _load_user_module(args.target, args.args)
        inputs = _user_inputs(module, args.shape, args.seed)
        reports = [(args.target, gradcheck(module, *inputs, seed=args.seed, samples=args.samples))]
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
    failed = [(name, r) for name, r in reports if not r.ok]
    elapsed = time.perf_counter() - start
    for name, r in failed:
        console.print(f"[red]FAIL[/red] {name}: {r.summary()}")
    total = sum(len(r.tensors) for _, r in reports)
    console.print(
        f"{len(reports) - len(failed)}/{len(reports)} modules passed ({total} gradients) "
        f"in {elapsed:.1f} s"
    )
    return 1 if failed else 0


def _table(reports: list[tuple[str, CheckReport]]) -> Table:
    t = Table(title="hand-written gradients vs autograd and finite differences (float64)")
    for col in ("case", "tensor", "shape"):
        t.add_column(col)
    for col in ("vs autograd (rel)", "vs finite diff (rel)", "forward vs torch"):
        t.add_column(col, justify="right")
    t.add_column("ok")
    for name, r in reports:
        fwd = "-" if r.forward_error is None else f"{r.forward_error:.1e}"
        if r.problem:
            t.add_row(name, "-", "-", "-", "-", fwd, f"[red]NO[/red] {r.problem}")
        for i, c in enumerate(r.tensors):
            t.add_row(
                name if i == 0 else "",
                c.name,
                str(c.shape),
                f"{c.autograd_rel:.1e}",
                f"{c.numeric_rel:.1e}",
                fwd if i == 0 else "",
                "[green]yes[/green]" if c.ok else f"[red]NO[/red] {c.problem}",
            )
    return t


def _load_user_module(target: str, arg_text: str) -> Module:
    path_text, sep, class_name = target.rpartition(":")
    if not sep or not path_text or not class_name:
        raise HandgradError(f"{target!r}: expected FILE.py:ClassName, e.g. my_layers.py:Swish")
    path = Path(path_text)
    if not path.is_file():
        raise HandgradError(
            f"{path}: no such file; give the path of the .py file that defines the layer"
        )
    spec = importlib.util.spec_from_file_location(f"handgrad_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise HandgradError(f"{path}: cannot be imported as Python; give a .py file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        raise HandgradError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
    cls = getattr(mod, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        found = sorted(
            n
            for n, v in vars(mod).items()
            if isinstance(v, type) and issubclass(v, Module) and v is not Module
        )
        raise HandgradError(
            f"{path}: no handgrad Module named {class_name!r} "
            f"(Modules found there: {', '.join(found) or 'none'})"
        )
    pos, kw = _parse_args(arg_text)
    try:
        return cls(*pos, **kw)
    except Exception as exc:
        raise HandgradError(
            f"{class_name}({arg_text}) failed: {type(exc).__name__}: {exc}; fix --args"
        ) from exc


def _parse_args(text: str) -> tuple[list[Any], dict[str, Any]]:
    """Parse ``"16, 4, bias=False"`` as literals only (nothing is evaluated)."""
    if not text.strip():
        return [], {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError(text)
        pos = [ast.literal_eval(a) for a in call.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError) as exc:
        raise HandgradError(
            f'--args {text!r}: not a list of Python literals (e.g. "16, 4, bias=False")'
        ) from exc
    return pos, kw


def _user_inputs(module: Module, shapes: list[str], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if not shapes:
        example = getattr(module, "example_inputs", None)
        if callable(example):
            return tuple(example())
        raise HandgradError(
            f"{type(module).__name__}: give each input's shape with --shape "
            "(e.g. --shape 8,16), or define example_inputs() on the class"
        )
    inputs = []
    for spec in shapes:
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
        else:
            inputs.append(torch.randn(shape, generator=g, dtype=torch.float64))
    return tuple(inputs)
