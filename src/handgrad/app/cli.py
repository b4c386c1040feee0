"""The ``handgrad`` command line: ``main(argv) -> exit status``.

Each sub-command lives in :mod:`handgrad.app.commands` as a module with ``add(subparsers)``, which
registers its parser and sets ``run=function(args) -> int``. Exit status: 0 success, 1 a check
failed, 2 bad input (a :class:`~handgrad.errors.HandgradError`, printed as one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from handgrad._version import __version__
from handgrad.app.commands import COMMANDS
from handgrad.errors import HandgradError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handgrad",
        description="Neural networks with hand-written backward passes, checked against "
        "autograd and finite differences.",
    )
    parser.add_argument("--version", action="version", version=f"handgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


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
