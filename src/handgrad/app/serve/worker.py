"""The training worker: ``handgrad train`` (:func:`handgrad.app.fit.train`) in its own process,
with one more callback, :class:`Stream`, that puts what happens on a queue for the server.

Events are plain dicts (JSON-able), each with a ``type``:

- ``log``: a line ``handgrad train`` printed (the run's header, its final lines);
- ``batch``: ``step``, ``epoch``, ``loss``, ``lr``, sent at most every :data:`BATCH_EVERY_S`;
- ``epoch``: the recorder's row for the finished epoch (losses, accuracy, lr, seconds);
- ``stats``: each layer's activation and gradient statistics for the batch at ``step``
  (``mean``, ``std``, ``near_zero``, the histogram and its range; see :class:`Stream`);
- and one of ``done`` (the final metrics), ``stopped`` (stopped from the page: the last
  checkpoint stays, resumable) or ``error`` (``message``), after which the process ends.

Stopping is ``handgrad train``'s Ctrl-C: the callback raises ``KeyboardInterrupt`` at the end of
a batch, so the run folder holds exactly what an interrupted ``handgrad train`` leaves (the
atomic checkpoints of the finished epochs, resumable with ``--resume``).
"""

from __future__ import annotations

import io
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import Tensor

from handgrad.app.config import TrainConfig
from handgrad.errors import HandgradError
from handgrad.train.learner import Callback, Learner
from handgrad.train.stats import ACT_ZERO, GRAD_ZERO, activation_edges, gradient_edges, summarize
from handgrad.train.stats.hooks import _leaf_modules

#: The most often a batch's loss is sent (the page draws ~20 points a second).
BATCH_EVERY_S = 0.05
#: Layer statistics: at most every STATS_EVERY_S, measured on a *copy* of the model (see
#: :class:`Stream`), so the run itself is untouched.
STATS_EVERY_S = 0.5


class Sink(Protocol):
    def put(self, item: Any) -> None: ...


class Stream(Callback):
    """Send the run's progress to ``sink``; raise ``KeyboardInterrupt`` once ``stop`` is set.

    The per-layer statistics are measured on a probe: a copy of the model runs the batch just
    trained on, forward and hand-written backward, with hooks on every layer (the statistics of
    :mod:`handgrad.train.stats`; histogram ranges fixed by the first probe). The training model
    carries no hooks, so it keeps its fastest path (the compiled step of ``FastLearner``, which
    hooks would turn off), its random draws are replayed (the generator's state is restored),
    and the run computes exactly what ``handgrad train`` computes.
    """

    order = 90  # after the Recorder (20) has written the epoch's row

    def __init__(self, sink: Sink, stop: Event | None = None) -> None:
        self.sink, self.stop = sink, stop
        self._last_batch = self._last_stats = 0.0
        self._edges: dict[str, Tensor] = {}

    def before_fit(self, learn: Learner) -> None:
        n = len(learn.train_dl)  # type: ignore[arg-type]
        self.sink.put(
            {"type": "start", "epochs": learn.n_epochs, "steps_per_epoch": n, "step": learn.step}
        )
        self._last_stats = 0.0

    def after_batch(self, learn: Learner) -> None:
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt("stopped from the page")
        if not learn.training:
            return
        now = time.perf_counter()
        if now - self._last_batch >= BATCH_EVERY_S:
            self._last_batch = now
            self.sink.put(
                {
                    "type": "batch",
                    "step": learn.step,
                    "epoch": learn.epoch + 1,
                    "loss": float(learn.loss),
                    "lr": float(learn.opt.lr),
                }
            )
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            self.sink.put({"type": "stats", "step": learn.step, "layers": self.probe(learn)})

    def after_epoch(self, learn: Learner) -> None:
        if learn.training:  # one probe per epoch at least: short runs get their columns too
            self._last_stats = time.perf_counter()
            self.sink.put({"type": "stats", "step": learn.step, "layers": self.probe(learn)})
        if learn.last_pass and learn.recorder.history:
            self.sink.put({"type": "epoch", **learn.recorder.history[-1]})

    def probe(self, learn: Learner) -> list[dict[str, Any]]:
        """Each layer's activation and gradient statistics for the current batch, measured on a
        copy of the model (the training model and the random generator are left as they were)."""
        model, loss_fn = learn.model.copy(), learn.loss_fn.copy()
        model.train()
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        layers = _leaf_modules(model)
        for name, m in layers:
            m.register_forward_hook(lambda m, a, out, name=name: acts.__setitem__(name, out))
            m.register_backward_hook(lambda m, dout, g, name=name: grads.__setitem__(name, dout))
        rng = torch.get_rng_state()
        try:
            with torch.no_grad():
                loss_fn(model(learn.xb), learn.yb)
                model.backward(loss_fn.backward()[0], need_input_grad=False)
        finally:
            torch.set_rng_state(rng)
        rows = []
        for name, m in layers:
            row: dict[str, Any] = {"name": name, "label": f"{name} ({type(m).__name__})"}
            for kind, table in (("act", acts), ("grad", grads)):
                if name in table and table[name].is_floating_point():
                    row[kind] = self._summary(f"{kind}:{name}", table[name], kind == "grad")
            rows.append(row)
        return rows

    def _summary(self, key: str, x: Tensor, log_scale: bool) -> dict[str, Any]:
        if key not in self._edges:  # the first probe fixes the range, as StatsHooks does
            self._edges[key] = (gradient_edges if log_scale else activation_edges)(x)
        edges = self._edges[key]
        threshold = GRAD_ZERO if log_scale else ACT_ZERO
        row, hist = summarize(x, edges, threshold=threshold, log_scale=log_scale)
        mean, std, near = row.tolist()
        return {
            "mean": mean,
            "std": std,
            "near_zero": near,
            "hist": [int(v) for v in hist.tolist()],
            "lo": float(edges[0]),
            "hi": float(edges[-1]),
            "log": log_scale,
        }


class _Lines(io.TextIOBase):
    """A text stream that sends each complete line it receives as a ``log`` event."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self._buffer = sink, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self.sink.put({"type": "log", "text": line.rstrip()})
        return len(text)


def run_worker(config: TrainConfig, given: set[str], sink: Sink, stop: Event) -> None:
    """The worker process's body: train, stream, and end with done, stopped or error."""
    from handgrad.app.fit import train  # imported in the worker: the server never trains

    console = Console(file=_Lines(sink), width=120, color_system=None, force_terminal=False)
    try:
        result = train(config, console, given=given, callbacks=[Stream(sink, stop)])
    except KeyboardInterrupt:
        last = Path(str(config.out)) / "last.safetensors"
        sink.put({"type": "stopped", "resumable": last.is_file()})
    except HandgradError as exc:
        sink.put({"type": "error", "message": str(exc)})
    except Exception as exc:  # reported on the page; the server goes on
        sink.put({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
    else:
        sink.put({"type": "done", "metrics": _jsonable(result)})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
