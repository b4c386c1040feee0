"""``handgrad report RUN_DIR``: one self-contained HTML page with a run's plots, configuration
and metrics (images embedded, nothing fetched), written to RUN_DIR/report.html.

    handgrad train --out runs/mlp --plots runs/mlp/plots
    handgrad report runs/mlp                  # -> runs/mlp/report.html
    handgrad report runs/mlp --out mlp.html
"""

from __future__ import annotations

import argparse
from typing import Any

from handgrad._io import write_text
from handgrad.app.outputs import check_file
from handgrad.app.report import read_run, render_report
from handgrad.app.text import plural
from handgrad.app.ui import make_console


def add(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML page with a run's plots, config and metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a 'handgrad train' run")
    p.add_argument("--out", help="where to write the page (default: RUN_DIR/report.html)")
    p.add_argument("--title", help="the page's title (default: the run folder's name)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    info = read_run(args.run_dir)
    target = check_file(args.out or info.run_dir / "report.html", "--out")
    path = write_text(target, render_report(info, title=args.title))
    size = path.stat().st_size
    console.print(
        f"wrote {path} ({size / 1e6:.1f} MB): {plural(len(info.plots), 'plot')}, "
        f"{plural(len(info.history), 'epoch')} of metrics"
    )
    return 0
