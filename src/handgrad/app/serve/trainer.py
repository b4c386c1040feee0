"""The server's side of live training: one worker process at a time, its events fanned out to
every browser tab that watches.

:class:`Trainer` starts :func:`~handgrad.app.serve.worker.run_worker` in a separate process
(forked from a fork server: nothing of the server's threads or event loop is inherited), reads the
worker's queue in a thread and hands each event to the event loop, which appends it to the
run's log (so a tab that connects late sees the whole run) and to each watcher's queue. A
watcher that does not keep up loses its oldest events rather than slowing anyone down. A worker
that dies without saying goodbye (killed, out of memory) is reported as an ``error`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

from handgrad.app.config import TrainConfig
from handgrad.app.serve.worker import run_worker

#: Events a watcher may fall behind by before its oldest are dropped.
WATCHER_BACKLOG = 2000
#: Events kept for tabs that connect while a run trains (batch events beyond it are thinned).
LOG_LIMIT = 20000
TERMINAL = ("done", "stopped", "error")


class Busy(RuntimeError):
    """A run is already training (one at a time per server)."""


class Trainer:
    """Starts, stops and watches the training worker (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # A fork server: a fresh process (none of the server's threads or event loop) that
        # has imported handgrad and torch once, so each run starts in a fraction of a second
        # rather than the seconds a spawned interpreter takes to import them.
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["handgrad.app.serve.worker", "handgrad.app.fit"])
        self.process: Any = None
        self.stop_event: Any = None
        self.state = "idle"  # idle, running, stopping, done, stopped, failed
        self.run: str | None = None
        self.config: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.watchers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.lock = threading.Lock()
        self.seq = 0

    # ------------------------------------------------------------------------ control
    def start(self, config: TrainConfig, given: set[str], run: str) -> None:
        """Start a worker for ``config`` (``config.out`` set: the run's folder)."""
        with self.lock:
            if self.state in ("running", "stopping"):
                raise Busy(f"run {self.run} is training; stop it or wait for it to finish")
            self.state, self.run = "running", run
            self.config = {k: v for k, v in asdict(config).items() if v is not None}
            self.events = []
            q = self.ctx.Queue()
            self.stop_event = self.ctx.Event()
            self.process = self.ctx.Process(
                target=run_worker,
                args=(config, given, q, self.stop_event),
                name=f"handgrad-train-{run}",
                daemon=True,
            )
            self.process.start()
        self._publish({"type": "begin", "run": run, "config": self.config})
        threading.Thread(target=self._pump, args=(q, self.process), daemon=True).start()

    def stop(self) -> bool:
        """Ask the running worker to stop after its current batch; ``False`` if none runs."""
        with self.lock:
            if self.state != "running":
                return False
            self.state = "stopping"
            self.stop_event.set()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker (if any) and wait for it; called when the server exits."""
        proc = self.process
        if proc is None or not proc.is_alive():
            return
        self.stop_event.set()
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(2)

    def status(self) -> dict[str, Any]:
        proc = self.process
        return {
            "state": self.state,
            "run": self.run,
            "config": self.config,
            "pid": proc.pid if proc is not None and proc.is_alive() else None,
            "events": len(self.events),
            "watchers": len(self.watchers),
        }

    # ------------------------------------------------------------------------- events
    def _pump(self, q: Any, proc: Any) -> None:
        """Thread: forward the worker's events until it ends; report a silent death."""
        ended = False
        while not ended:
            try:
                event = q.get(timeout=0.2)
            except queue.Empty:
                if proc.is_alive():
                    continue
                with contextlib.suppress(queue.Empty):  # the last events, flushed at exit
                    while True:
                        self._send(q.get(timeout=0.5))
                        if self._ended:
                            break
                if not self._ended:
                    self._send({"type": "error", "message": _death(proc.exitcode)})
                ended = True
                continue
            self._send(event)
            ended = self._ended
        proc.join(5)

    @property
    def _ended(self) -> bool:
        return bool(self.events) and self.events[-1].get("type") in TERMINAL

    def _send(self, event: dict[str, Any]) -> None:
        if event.get("type") in TERMINAL:
            with self.lock:
                state = {"done": "done", "stopped": "stopped", "error": "failed"}
                self.state = state[event["type"]]
            event = {**event, "run": self.run}
        # appended here (not only in the loop) so that _ended sees it at once
        self._append(event)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is exiting
            self.loop.call_soon_threadsafe(self._fan_out, event)

    def _publish(self, event: dict[str, Any]) -> None:
        self._append(event)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._fan_out, event)

    def _append(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            event["seq"], event["time"] = self.seq, time.time()
            self.events.append(event)
            if len(self.events) > LOG_LIMIT:  # keep every other batch event of the oldest half
                half = self.events[: LOG_LIMIT // 2]
                thinned = [e for i, e in enumerate(half) if e["type"] != "batch" or i % 2]
                self.events = thinned + self.events[LOG_LIMIT // 2 :]

    def _fan_out(self, event: dict[str, Any]) -> None:
        for w in list(self.watchers):
            if w.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    w.get_nowait()
            w.put_nowait(event)

    def watch(self) -> tuple[asyncio.Queue[dict[str, Any]], list[dict[str, Any]]]:
        """A new watcher's queue and the events so far (called in the event loop)."""
        w: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WATCHER_BACKLOG)
        with self.lock:
            self.watchers.add(w)
            return w, list(self.events)

    def unwatch(self, w: asyncio.Queue[dict[str, Any]]) -> None:
        self.watchers.discard(w)


def _death(code: int | None) -> str:
    """Why a worker ended without a last event."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with status {code}"
    return (
        f"the training worker {how} before finishing; its last finished epoch's checkpoint "
        "(if any) is in the run folder and can be resumed"
    )
