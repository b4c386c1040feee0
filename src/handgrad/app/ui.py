"""Terminal output shared by the commands: one rich console, wide enough for tables in logs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def make_console(stderr: bool = False) -> Console:
    """A console that writes plain text when piped (no colours, 140 columns for tables)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 140)


@contextmanager
def download_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A download's progress bar on stderr, shown only on a terminal and removed when done
    (a :data:`handgrad.data.sources.download.TransferBar`)."""
    console = make_console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(
        *columns,
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
