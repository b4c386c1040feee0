"""The README's Python training snippet runs as written and prints what the README shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
LINE = re.compile(
    r"epoch (\d)/5  train_loss \d\.\d{4}  valid_loss \d\.\d{4}  valid_accuracy (\d\.\d{4})  "
    r"lr \d\.\d{2}e[+-]\d{2}  \d+\.\ds"
)


def training_section() -> tuple[str, str]:
    """The ``## Training`` section's first python block and the output block after it."""
    section = README.read_text().split("## Training", 1)[1]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    code = next(text for lang, text in blocks if lang == "python")
    shown = next(text for lang, text in blocks if lang == "" and "epoch 1/5" in text)
    return code, shown


def test_the_readme_training_snippet_prints_one_line_per_epoch() -> None:
    code, shown = training_section()
    assert [LINE.fullmatch(s) is not None for s in shown.splitlines() if s != "..."] == [True] * 2
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    lines = out.getvalue().splitlines()
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches if m] == [1, 2, 3, 4, 5]
    last = float(matches[-1][2]) if matches[-1] else 0.0
    assert last > 0.85, lines  # the README shows 0.93: a trained net, not a printout
