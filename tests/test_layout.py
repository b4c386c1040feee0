"""The package layout (issue 14): the core imports torch only, the public names load lazily,
and the old import paths still work with a DeprecationWarning. Each check runs in a fresh
interpreter, since this test process has long imported everything."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("rich", "matplotlib", "sympy", "safetensors")


def run(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout; fail with its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("module", ["handgrad.nn", "handgrad"])
def test_import_loads_no_heavy_dependency(module) -> None:
    out = run(f"""
        import sys
        import {module}
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
    """)
    assert out.strip() == "[]", f"import {module} loaded {out.strip()}"


def test_public_names_from_three_layers() -> None:
    run("""
        from handgrad import Learner, Linear, gradcheck
        import handgrad.check, handgrad.nn, handgrad.train.learner
        assert Linear is handgrad.nn.Linear
        assert Learner is handgrad.train.learner.Learner
        assert gradcheck is handgrad.check.gradcheck
    """)


def test_old_path_works_and_warns() -> None:
    out = run("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import handgrad.layers
        import handgrad.nn.layers
        assert handgrad.layers is handgrad.nn.layers
        print([str(w.message) for w in caught if w.category is DeprecationWarning])
    """)
    assert "handgrad.layers is now handgrad.nn.layers" in out


def test_every_file_compiled_at_run_time_ships_with_the_package() -> None:
    """C and C++ sources are compiled on first use, so a wheel without them silently falls
    back to the slow path: each one under src/handgrad must match a package-data pattern."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["handgrad"]
    package = root / "src" / "handgrad"
    sources = [p for ext in ("*.c", "*.cpp") for p in package.rglob(ext)]
    assert sources, "no compiled sources found: the test looks in the wrong place"
    missing = [
        str(p.relative_to(package))
        for p in sources
        if not any(fnmatch.fnmatch(str(p.relative_to(package)), pat) for pat in patterns)
    ]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
