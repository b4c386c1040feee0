"""The ``handgrad`` command line: ``main(argv) -> exit status``.

Each sub-command lives in :mod:`handgrad.app.commands` as a module with ``add(subparsers)``, which
registers its parser and sets ``run=function(args) -> int``. Exit status: 0 success, 1 a check
failed, 2 bad input (a :class:`~handgrad.errors.HandgradError`, printed as one line).

Every parser prints its help with :class:`HelpFormatter`: the description as written, without
reStructuredText's double backticks, and each option's default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from handgrad._version import __version__
from handgrad.app.commands import COMMANDS
from handgrad.errors import HandgradError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (docstrings, without ``double backticks``); every option that
    takes a value shows its default, unless its help already says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(text.replace("``", ""), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("``", "")
        takes_value = action.nargs != 0 and action.option_strings
        if takes_value and action.default is not None and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handgrad",
        description="Neural networks with hand-written backward passes, checked against "
        "autograd and finite differences.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"handgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(sub)
    _use_formatter(parser)
    return parser


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """:class:`HelpFormatter` for ``parser`` and every sub-command's parser, at any depth."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _use_formatter(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except HandgradError as exc:
        print(f"handgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"handgrad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
