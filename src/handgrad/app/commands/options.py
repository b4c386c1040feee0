"""Options several commands share, declared once so that they read the same everywhere."""

from __future__ import annotations

import argparse


def add_data_source(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--no-download``: where named datasets are cached, and whether a
    missing one may be downloaded (every command that loads data takes them). Their default is
    ``None`` so that ``handgrad train --resume`` can tell which ones the user gave."""
    p.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="cache folder of the named datasets (default: $HANDGRAD_DATA or ~/.cache/handgrad)",
    )  # fmt: skip
    p.add_argument(
        "--no-download", action="store_true", default=None,
        help="fail rather than download a named dataset missing on this machine",
    )  # fmt: skip
