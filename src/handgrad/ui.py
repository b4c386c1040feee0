"""Terminal output shared by the commands: one rich console, wide enough for tables in logs."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """A console that writes plain text when piped (no colours, 140 columns for tables)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 140)
