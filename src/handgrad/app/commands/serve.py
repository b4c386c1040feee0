"""``handgrad serve [RUN_DIR | CHECKPOINT]``: a live lab in the browser. Draw a digit and see
the input the model takes, its probabilities, every layer and the input gradient (from the
hand-written backward); train a run and watch its curves and layer statistics stream in;
compare the runs. Needs the serve extra: pip install 'handgrad[serve]'.

    handgrad serve                         # the newest run in runs/ (none: trains one first)
    handgrad serve runs/<run>              # that run's best checkpoint
    handgrad serve runs/<run>/last.safetensors --port 8001

The server listens on 127.0.0.1 (this machine only) unless --host says otherwise. Its JSON API
(/api/...) is documented in docs/serve.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from handgrad.app.progress import say
from handgrad.app.ui import make_console
from handgrad.errors import HandgradError


def add(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="a live lab in the browser: draw, see every layer and its gradient, train live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", metavar="RUN_DIR|CHECKPOINT", nargs="?", default=None,
        help="a run folder (its best checkpoint) or a .safetensors (default: the newest run in "
        "--runs; with none, an mlp is trained on mnist-sample first)",
    )  # fmt: skip
    p.add_argument("--runs", default="runs", help="the folder of runs (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free)")
    p.set_defaults(run=run)


def _checkpoint(source: str | None, runs: Path) -> Path | None:
    """The checkpoint to start with; ``None``: no run yet."""
    from handgrad.app.serve.runs import newest_checkpoint

    if source is None:
        return newest_checkpoint(runs)
    path = Path(source)
    if path.is_dir():
        for which in ("best", "last"):
            if (path / f"{which}.safetensors").is_file():
                return path / f"{which}.safetensors"
        raise HandgradError(
            f"{source}: no best.safetensors or last.safetensors in it; give a run folder "
            "written by handgrad train"
        )
    if not path.is_file():
        raise HandgradError(f"{source}: no such file or folder; give a run folder or checkpoint")
    return path


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from handgrad.app.serve.app import create_app
    except ImportError as exc:
        raise HandgradError(
            f"handgrad serve needs the serve extra ({exc.name} is missing); install it with "
            "pip install 'handgrad[serve]'"
        ) from None
    import torch

    console = make_console()
    if not 0 <= args.port <= 65535:
        raise HandgradError(f"--port {args.port}: give a port from 0 to 65535")
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise HandgradError(f"--runs {args.runs}: is a file; give the folder of runs")
    ckpt = _checkpoint(args.source, runs)
    if ckpt is None:
        ckpt = _first_run(runs, console)
    app = create_app(runs, ckpt)  # loads the checkpoint: a bad one is one line, exit 2
    # One thread per prediction: a single drawing is too small to split, and on a shared
    # machine extra threads only wait for each other (benchmarks/bench_serve.py).
    torch.set_num_threads(1)
    if not _loopback(args.host):
        say(
            console,
            f"warning: listening on {args.host}: anyone who can reach this machine can use the "
            "lab and start training runs",
        )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    handle_exit = server.handle_exit

    def closing(sig: int, frame: Any) -> None:  # Ctrl-C: end the open event streams first
        app.state.hg.closing = True
        handle_exit(sig, frame)

    server.handle_exit = closing  # type: ignore[method-assign]
    _announce_when_up(server, args.host, console, ckpt)
    server.run()
    return 0


def _first_run(runs: Path, console: Any) -> Path:
    """No run yet: train the default model on mnist-sample (seconds), as ``handgrad train``."""
    from handgrad.app.config import TrainConfig
    from handgrad.app.fit import default_out, train

    out = runs / default_out("mlp").name
    say(console, f"no run in {runs}: training the default mlp on mnist-sample first ({out})")
    train(TrainConfig(out=str(out)), console, given={"out"})
    return out / "best.safetensors"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _announce_when_up(server: Any, host: str, console: Any, ckpt: Path) -> None:
    """Print the URL once the socket is bound (with --port 0, only then is the port known)."""
    started = server.startup

    async def startup(sockets: Any = None) -> None:
        await started(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                say(console, f"handgrad serve: {ckpt} on http://{shown}:{port}/ (Ctrl-C to stop)")
                sys.stdout.flush()
                return

    server.startup = startup
