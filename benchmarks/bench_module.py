"""Per-call bookkeeping of ``Module.__call__`` + ``backward``: this tree against a git revision.

The layers below do no arithmetic (their forward returns a ready tensor, their ``bwd`` assigns
ready gradients), so the time measured is the framework's own work per layer per batch: the
saved-context stack, the ``.g`` plumbing, the shape checks, the hooks lookup. Both versions of
``handgrad/module.py`` are loaded into the same process and timed alternately, median of rounds.

    PYTHONPATH=src python benchmarks/bench_module.py --baseline main --calls 1000 --rounds 15
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch


def load_module_py(source: str, name: str) -> ModuleType:
    """Import the text of a ``module.py`` as a stand-alone module called ``name``."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_layers(m: ModuleType) -> dict[str, object]:
    """One parameter-free and one two-parameter layer on the given ``Module`` class."""
    x, out = torch.zeros(64, 8), torch.zeros(64, 8)
    w, b = torch.zeros(8, 8), torch.zeros(8)

    class Act(m.Module):  # like ReLU: one argument, no parameters
        def forward(self, x):
            return out

        def bwd(self, out_, x_):
            x_.g = out_.g

    class Dense(m.Module):  # like Linear: one argument, weight and bias
        def __init__(self):
            self.weight, self.bias = m.Parameter(torch.zeros(8, 8)), m.Parameter(torch.zeros(8))

        def forward(self, x):
            return out

        def bwd(self, out_, x_):
            self.weight.g, self.bias.g = w, b
            x_.g = out_.g

    net = m.Sequential(Dense(), Act(), Dense())
    return {"Act": (Act(), x), "Dense": (Dense(), x), "Sequential(3)": (net, x)}


def time_calls(layer, x, dout, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        layer(x)
        layer.backward(dout)
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default="main", help="git revision of the baseline module.py")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    old_src = subprocess.run(
        ["git", "show", f"{args.baseline}:src/handgrad/module.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    versions = {
        args.baseline: load_module_py(old_src, "module_baseline"),
        "this tree": load_module_py((root / "src/handgrad/module.py").read_text(), "module_new"),
    }
    dout = torch.zeros(64, 8)
    print(f"torch {torch.__version__}; {args.calls} forward+backward calls per round, median")
    print(f"{'layer':<15}" + "".join(f"{v:>14}" for v in versions) + f"{'speed-up':>10}")
    for case in ("Act", "Dense", "Sequential(3)"):
        layers = {v: make_layers(m)[case] for v, m in versions.items()}
        times: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(args.rounds):
            order = list(versions) if r % 2 == 0 else list(versions)[::-1]
            for v in order:
                layer, x = layers[v]
                times[v].append(time_calls(layer, x, dout, args.calls))
        med = {v: statistics.median(t) for v, t in times.items()}
        old, new = med.values()
        print(
            f"{case:<15}"
            + "".join(f"{t * 1e6:>11.2f} us" for t in med.values())
            + f"{old / new:>9.2f}x"
        )


if __name__ == "__main__":
    main()
