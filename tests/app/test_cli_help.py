"""The command line's words: every option explained with its default, counts that read right,
models described by their layers, and ``handgrad check``'s table within 80 columns."""

from __future__ import annotations

import argparse
import io

import torch
from rich.console import Console

from handgrad.app.cli import build_parser
from handgrad.app.commands.check import _table
from handgrad.app.fit import describe_model
from handgrad.app.text import plural
from handgrad.check import gradcheck
from handgrad.check.cases import CASES
from handgrad.nn.models import MODELS, build_model


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser by name (``data info`` for nested ones)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


def test_every_option_has_help_with_its_default() -> None:
    all_parsers = parsers()
    assert {"train", "evaluate", "predict", "demo", "data info"} <= set(all_parsers)
    for name, parser in all_parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings}: no help"
            if action.nargs != 0:  # takes a value: its default is shown
                formatter = parser._get_formatter()
                shown = formatter._expand_help(action)  # type: ignore[attr-defined]
                assert "default" in shown, f"{name} {action.option_strings}: {shown}"
        assert "``" not in text, name
    train = all_parsers["train"].format_help()
    assert "(default: 0)" in train and "default by --model: lesson 10, mlp 20, cnn 10" in train


def test_no_help_has_double_backticks_and_model_lists_every_recipe() -> None:
    for name, parser in parsers().items():
        assert "``" not in parser.format_help(), name
    model = next(a for a in parsers()["train"]._actions if "--model" in a.option_strings)
    assert all(f"{m} (" in model.help for m in MODELS)
    assert "no recipe" not in model.help  # every model has a recipe and a description


def test_bench_help_names_no_issue() -> None:
    assert "issue" not in parsers()["bench"].format_help().lower()


def test_counts_read_right() -> None:
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert plural(1, "class", "classes") == "1 class" and plural(10_000, "step") == "10,000 steps"


def test_models_are_described_by_their_layers() -> None:
    gen = torch.Generator().manual_seed(0)

    def described(name: str, **kwargs) -> str:
        model = build_model(name, in_features=784, n_classes=10, generator=gen, **kwargs)
        return describe_model(model, 784).split(",")[0]

    assert described("mlp", hidden=(32, 16)) == "784-32-16-10"
    assert described("cnn") == "784-conv16-conv32/2-conv64/2-conv128/2-conv128-avgpool-10"
    assert described("resnet") == "784-conv16-res16-res32/2-res64/2-res128/2-avgpool-10"


def test_check_table_fits_80_columns_with_whole_names() -> None:
    """Every case's name beside the widest tensors (the tiny cnn's), as a log file gets it."""
    g = torch.Generator().manual_seed(0)
    widest = next(c for c in CASES if c.name.startswith("cnn"))
    report = gradcheck(widest.make(g), *widest.inputs(g), samples=2)
    console = Console(file=io.StringIO(), width=140)  # make_console's width for a pipe
    console.print(_table([(c.name, report) for c in CASES]))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert max(len(ln) for ln in lines) <= 80
    cells = {cell.strip() for ln in lines for cell in ln.split("│")}
    assert {c.name for c in CASES} <= cells  # each name whole, on one line
    assert "layers.4.weight  (3, 2, 3, 3)" in cells and "…" not in "".join(lines)
