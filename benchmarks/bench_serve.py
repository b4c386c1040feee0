"""``handgrad serve``: the latency of a drawing, and what streaming costs a live run.

Run: ``PYTHONPATH=src python benchmarks/bench_serve.py [--requests 200] [--rounds 5]``

1. **Drawing to answer**, for the ``mlp`` and ``cnn`` recipes (each trained first on
   mnist-sample, seconds): a real ``handgrad serve`` (uvicorn, its own process) gets
   ``--requests`` ``POST /api/predict`` calls, each a 280x280 canvas PNG of a validation digit
   as the page sends it (base64 data URL), over one keep-alive connection. *Server* is the
   time the server reports for its part (reading the body, decoding the PNG, ``prepare_image``,
   forward, the hand-written backward for the saliency, encoding the layers); *round trip* is
   the client's wall time from sending to the parsed JSON. p50 and p95 over the requests.
   The browser's own part (``toDataURL`` of the canvas, painting the answer) is not included.
2. **Live run against ``handgrad train``**: the same config (mlp recipe, 8 epochs,
   mnist-sample) trained by :func:`handgrad.app.fit.train` as the CLI does and with the Train
   page's :class:`~handgrad.app.serve.worker.Stream` callback sending to a queue, alternating,
   ``--rounds`` times each in this process; the ratio of the medians of the training time
   (``train_seconds``).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "app" / "serve"))

from serve_helpers import Server, digits  # noqa: E402

from handgrad.app.config import TrainConfig  # noqa: E402
from handgrad.app.fit import train  # noqa: E402
from handgrad.app.serve.worker import Stream  # noqa: E402

EPOCHS = 8


def canvas_png(rows: list[list[float]]) -> str:
    """A 280x280 PNG of the digit, as the page's canvas sends it."""
    from PIL import Image

    a = (np.kron(np.asarray(rows), np.ones((10, 10))) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def latency(runs: Path, model: str, n: int) -> tuple[list[float], list[float]]:
    server = Server(runs, runs / model / "best.safetensors")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        pngs = [canvas_png(rows) for rows, _ in digits(50)]
        server_ms, trip_ms = [], []
        for i in range(n + 10):
            body = json.dumps({"image": pngs[i % len(pngs)]})
            t0 = time.perf_counter()
            conn.request("POST", "/api/predict", body, {"content-type": "application/json"})
            r = json.loads(conn.getresponse().read())
            dt = (time.perf_counter() - t0) * 1e3
            if i >= 10:  # the first requests warm the server up
                server_ms.append(r["server_ms"])
                trip_ms.append(dt)
        return server_ms, trip_ms
    finally:
        server.stop()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def train_seconds(out: Path, stream: bool) -> float:
    config = TrainConfig(epochs=EPOCHS, out=str(out), overwrite=True, quiet=True, logger="")
    sink: queue.SimpleQueue[object] = queue.SimpleQueue()
    callbacks = [Stream(sink)] if stream else []
    result = train(config, Console(quiet=True), given={"out", "overwrite"}, callbacks=callbacks)
    return float(result["train_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        c = Console(quiet=True)
        train(TrainConfig(epochs=2, out=str(runs / "mlp"), quiet=True), c, given={"out"})
        cnn = TrainConfig(model="cnn", epochs=1, out=str(runs / "cnn"), quiet=True)
        train(cnn, c, given={"out"})
        print(f"drawing -> answer, {args.requests} requests each (ms)")
        print(f"{'model':6} {'server p50':>10} {'server p95':>10} {'trip p50':>9} {'trip p95':>9}")
        for model in ("mlp", "cnn"):
            s, t = latency(runs, model, args.requests)
            print(
                f"{model:6} {pct(s, 50):10.2f} {pct(s, 95):10.2f} {pct(t, 50):9.2f} "
                f"{pct(t, 95):9.2f}"
            )
        plain, live = [], []
        train_seconds(Path(tmp) / "warm", stream=True)  # warm-up (the fast path's build)
        for i in range(args.rounds):  # alternating, each side first in every other round
            for stream in (i % 2 == 1, i % 2 == 0):
                seconds = train_seconds(Path(tmp) / f"r{stream}", stream=stream)
                (live if stream else plain).append(seconds)
        p, q = statistics.median(plain), statistics.median(live)
        print(
            f"training, mlp {EPOCHS} epochs, median of {args.rounds}: handgrad train {p:.3f} s, "
            f"streamed {q:.3f} s, ratio {q / p:.3f}"
        )


if __name__ == "__main__":
    main()
