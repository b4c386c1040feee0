"""What the serve tests share: a real ``handgrad serve`` in a subprocess, and real digits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


class Server:
    """``handgrad serve`` in a subprocess on a free loopback port."""

    def __init__(self, runs: Path, source: Path | None = None) -> None:
        args = [sys.executable, "-m", "handgrad", "serve", "--runs", str(runs), "--port", "0"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [*args, *([str(source)] if source else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=runs.parent,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            self.lines.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
                self.url = m.group(1)
                return
        self.stop()
        raise RuntimeError("handgrad serve did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def digits(n: int, seed: int = 0) -> list[tuple[list[list[float]], int]]:
    """``n`` validation digits of mnist-sample, (28x28 rows in [0, 1], label), classes mixed."""
    import torch

    from handgrad.data import load_dataset

    ds = load_dataset("mnist-sample")
    x, y = ds.valid.x.float(), ds.valid.y
    scale = 255.0 if float(x.max()) > 1 else 1.0
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return [((x[i].reshape(28, 28) / scale).tolist(), int(y[i])) for i in idx]
