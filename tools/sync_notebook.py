"""Build a Jupyter notebook from a jupytext "percent" script, the script being the source.

    python tools/sync_notebook.py                 # docs/tutorial.py -> docs/tutorial.ipynb
    python tools/sync_notebook.py --check         # exit 1 if the .ipynb is out of date
    python tools/sync_notebook.py a.py b.ipynb

The percent format: a cell starts at a line ``# %%`` (code) or ``# %% [markdown]`` (markdown,
every line a comment ``# text``); a leading ``# ---`` ... ``# ---`` block is the jupytext
header and is not a cell. The notebook is nbformat 4.5 JSON with empty outputs, written by
hand (standard library only) and deterministically (cell ids from the cell's position and
content), so that regenerating it from an unchanged script changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = ROOT / "docs" / "tutorial.py"
CELL = re.compile(r"^# %%(?P<title>[^\[]*)(?:\[(?P<kind>\w+)\])?\s*$")

METADATA: dict[str, Any] = {
    "jupytext": {"formats": "ipynb,py:percent", "main_language": "python"},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def _strip_header(lines: list[str]) -> list[str]:
    if lines and lines[0].strip() == "# ---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "# ---":
                return lines[i + 1 :]
    return lines


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    return line[1:] if line.startswith("#") else line


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def parse_percent(text: str) -> list[tuple[str, str]]:
    """The cells of a percent script as ``(kind, source)``, kind ``code`` or ``markdown``."""
    cells: list[tuple[str, list[str]]] = [("code", [])]
    for line in _strip_header(text.splitlines()):
        m = CELL.match(line)
        if m:
            kind = (m.group("kind") or "code").lower()
            if kind not in ("code", "markdown", "md"):
                raise ValueError(f"unknown cell kind [{kind}] in {line!r}")
            cells.append(("markdown" if kind in ("markdown", "md") else "code", []))
            continue
        kind, body = cells[-1]
        body.append(_uncomment(line) if kind == "markdown" else line)
    out = []
    for kind, body in cells:
        body = _trim(body)
        if body:
            out.append((kind, "\n".join(body)))
    return out


def _source_lines(source: str) -> list[str]:
    lines = source.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def to_notebook(text: str) -> dict[str, Any]:
    """The nbformat 4.5 notebook (a dict) for the percent script ``text``."""
    cells = []
    for i, (kind, source) in enumerate(parse_percent(text)):
        digest = hashlib.sha1(f"{i}\0{kind}\0{source}".encode()).hexdigest()[:8]
        cell: dict[str, Any] = {
            "cell_type": kind,
            "id": f"c{i:03d}-{digest}",
            "metadata": {},
            "source": _source_lines(source),
        }
        if kind == "code":
            cell |= {"execution_count": None, "outputs": []}
        cells.append(cell)
    return {"cells": cells, "metadata": METADATA, "nbformat": 4, "nbformat_minor": 5}


def render(text: str) -> str:
    """The notebook file's exact contents for the percent script ``text``."""
    return json.dumps(to_notebook(text), indent=1, ensure_ascii=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("script", nargs="?", type=Path, default=DEFAULT_SCRIPT)
    p.add_argument("notebook", nargs="?", type=Path, default=None)
    p.add_argument("--check", action="store_true", help="only check that the notebook is in sync")
    args = p.parse_args(argv)
    notebook = args.notebook or args.script.with_suffix(".ipynb")
    want = render(args.script.read_text(encoding="utf-8"))
    if args.check:
        have = notebook.read_text(encoding="utf-8") if notebook.exists() else ""
        if have != want:
            print(
                f"{notebook} is out of date with {args.script}; run: python tools/sync_notebook.py",
                file=sys.stderr,
            )
            return 1
        print(f"{notebook} is in sync with {args.script}")
        return 0
    write_atomic(notebook, want)
    print(f"wrote {notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
