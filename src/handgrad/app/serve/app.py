"""The web app of ``handgrad serve``: three pages and the JSON API they use (``docs/serve.md``
documents every endpoint).

Pages: ``/`` (Draw), ``/train`` (Train live), ``/runs`` (Runs), and ``/runs/NAME/report`` (a
run's ``handgrad report`` page, rendered on request). Static files come from the package
(``static/``, with the vendored uPlot charting library); nothing is fetched from elsewhere.

Rules every endpoint keeps: a request body is read only up to :data:`MAX_BODY` bytes (413
beyond); every error under ``/api/`` is a JSON ``{"error": "..."}`` with a 4xx status; a run
is named by its folder name only and resolved inside the runs folder (:mod:`.runs`); nothing a
request sends is executed or opened as a path. The model's work (``prepare_image``, forward,
backward) runs in a thread, training in a worker process (:mod:`.trainer`): the event loop
only moves bytes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from handgrad.app.config import TrainConfig, check_config, config_for_resume, parse_hidden
from handgrad.app.fit import describe_model
from handgrad.app.report import read_run, render_report
from handgrad.app.serve.drawing import DrawingError, drawing_bytes, prepare_drawing
from handgrad.app.serve.lab import Lab
from handgrad.app.serve.runs import NAME, NotFound, checkpoint_path, list_runs, run_path
from handgrad.app.serve.trainer import Busy, Trainer
from handgrad.data import NAMES
from handgrad.errors import HandgradError
from handgrad.nn.models import MODELS
from handgrad.optim.optimizers import OPTIMIZERS
from handgrad.optim.schedules import SCHEDULES
from handgrad.train.inference import load_trained
from handgrad.train.recipes import recipe_for

STATIC = Path(__file__).with_name("static")
#: The largest request body accepted: a 280x280 canvas PNG is ~10-30 kB; a pixels list of
#: 1024x1024 values would be ~5 MB, so that is the limit.
MAX_BODY = 6 * 1024 * 1024
PAGES = {"/": "draw.html", "/train": "train.html", "/runs": "runs.html"}
#: Options the Train page may set, with their types; anything else is refused.
TRAIN_FIELDS: dict[str, type] = {
    "data": str, "model": str, "epochs": int, "lr": float, "opt": str, "bs": int,
    "schedule": str, "hidden": str, "seed": int, "name": str,
}  # fmt: skip
MAX_EPOCHS = 1000


class ApiError(Exception):
    """An answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class State:
    """What the server holds: the runs folder, the model drawings go to, the trainer."""

    runs: Path
    lab: Lab | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    trainer: Trainer | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    closing: bool = False  # set when the server shuts down: event streams end

    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Make ``checkpoint`` the model of the Draw page (its sidecar describes it)."""
        trained = load_trained(checkpoint)
        lab = Lab.from_trained(trained)
        info = trained.ckpt.info
        try:
            run = str(checkpoint.resolve().parent.relative_to(self.runs.resolve()))
        except ValueError:  # a checkpoint given on the command line, outside the runs folder
            run = None
        model = info["model"]
        n_features = int(trained.data["n_features"])
        with self.load_lock:
            self.lab = lab
            self.model_info = {
                "run": run,
                "checkpoint": checkpoint.name,
                "path": str(checkpoint),
                "model": model["name"],
                "description": describe_model(trained.model, n_features),
                "classes": lab.classes,
                "image_shape": list(trained.data["image_shape"]),
                "dataset": trained.data.get("name"),
                "epoch": info.get("epoch"),
                "loss": trained.loss_name,
                "metrics": {
                    k: v for k, v in (info.get("metrics") or {}).items() if isinstance(v, float)
                },
            }
        return self.model_info


# ------------------------------------------------------------------------------ helpers
async def read_json(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object, read up to ``limit`` bytes (413 beyond, 400 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"request body over {limit:,} bytes; send a smaller drawing")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit:,} bytes; send a smaller drawing")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"{what}: give a whole number from {lo} to {hi}")
    return value


def _state(request: Request) -> State:
    return request.app.state.hg


# -------------------------------------------------------------------------------- pages
async def page(request: Request) -> FileResponse:
    return FileResponse(STATIC / PAGES[request.url.path], headers={"cache-control": "no-cache"})


async def report_page(request: Request) -> HTMLResponse:
    folder = run_path(_state(request).runs, request.path_params["name"])
    info = await run_in_threadpool(read_run, folder)
    html = await run_in_threadpool(render_report, info)
    return HTMLResponse(html)


# ---------------------------------------------------------------------------------- API
async def health(request: Request) -> JSONResponse:
    trainer = _state(request).trainer
    return JSONResponse({"ok": True, "training": trainer.state if trainer else "idle"})


async def get_model(request: Request) -> JSONResponse:
    s = _state(request)
    if s.lab is None:
        raise ApiError(404, "no model loaded; train one on the Train page, or choose a run")
    return JSONResponse(s.model_info)


async def set_model(request: Request) -> JSONResponse:
    s = _state(request)
    body = await read_json(request, 4096)
    path = checkpoint_path(s.runs, body.get("run"), body.get("checkpoint", "best"))
    return JSONResponse(await run_in_threadpool(s.load, path))


async def predict(request: Request) -> JSONResponse:
    s = _state(request)
    started = time.perf_counter()
    body = await read_json(request)
    lab = s.lab
    if lab is None:
        raise ApiError(409, "no model loaded; train one on the Train page, or choose a run")
    target = body.get("target")
    if target is not None:
        target = _int(target, "target", 0, len(lab.classes) - 1)
    floats = body.get("floats", False) is True
    data = drawing_bytes(body)

    def work() -> dict[str, Any]:
        pixels = prepare_drawing(data, lab.trained)
        return lab.analyse(pixels, target, floats=floats)

    result = await run_in_threadpool(work)
    result["server_ms"] = round((time.perf_counter() - started) * 1e3, 3)
    return JSONResponse(result)


async def list_runs_api(request: Request) -> JSONResponse:
    s = _state(request)
    rows = await run_in_threadpool(list_runs, s.runs)
    return JSONResponse({"folder": str(s.runs), "runs": rows})


async def one_run(request: Request) -> JSONResponse:
    folder = run_path(_state(request).runs, request.path_params["name"])
    info = await run_in_threadpool(read_run, folder)
    return JSONResponse(
        {
            "name": folder.name,
            "history": info.history,
            "metrics": info.metrics,
            "config": info.sidecar.get("config") or info.metrics.get("config"),
            "plots": [p.name for p in info.plots],
        }
    )


async def options(request: Request) -> JSONResponse:
    """What the Train page's form offers, with each model's recipe defaults."""
    recipes = {}
    for name in MODELS:
        r = recipe_for(name)
        recipes[name] = {
            "epochs": r.epochs, "lr": r.lr, "opt": r.opt, "bs": r.bs, "schedule": r.schedule,
            "hidden": ",".join(map(str, r.hidden)) if r.hidden else None,
        }  # fmt: skip
    return JSONResponse(
        {
            "data": list(NAMES),
            "models": list(MODELS),
            "optimizers": list(OPTIMIZERS),
            "schedules": list(SCHEDULES),
            "recipes": recipes,
        }
    )


def train_config(body: dict[str, Any], runs: Path) -> tuple[TrainConfig, set[str], str]:
    """The ``TrainConfig`` that a Train form describes (checked as ``handgrad train`` checks
    its options), what it sets, and the run's name."""
    unknown = sorted(set(body) - set(TRAIN_FIELDS))
    if unknown:
        known = ", ".join(TRAIN_FIELDS)
        raise ApiError(400, f"unknown option(s) {', '.join(unknown)}; known: {known}")
    values: dict[str, Any] = {}
    for k, v in body.items():
        if v is None or v == "":
            continue
        kind = TRAIN_FIELDS[k]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ApiError(400, f"{k}: expected a {kind.__name__}, got {v!r}")
        values[k] = v
    choices = {"data": NAMES, "model": MODELS, "opt": OPTIMIZERS, "schedule": SCHEDULES}
    for k, allowed in choices.items():
        if k in values and values[k] not in allowed:
            raise ApiError(400, f"{k} {values[k]!r}: choose one of {', '.join(allowed)}")
    if "epochs" in values:
        _int(values["epochs"], "epochs", 1, MAX_EPOCHS)
    model = values.get("model", "mlp")
    name = values.pop("name", None) or f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"
    if not NAME.fullmatch(name):
        raise ApiError(400, f"name {name!r}: use letters, digits, '.', '_' and '-'")
    out = runs / name
    if out.exists():
        if body.get("name"):
            raise ApiError(409, f"run {name!r} exists; give another name, or resume it")
        i = 2
        while (runs / f"{name}-{i}").exists():
            i += 1
        name, out = f"{name}-{i}", runs / f"{name}-{i}"
    try:
        if "hidden" in values:
            values["hidden"] = parse_hidden(values["hidden"])
        config = TrainConfig(**values, out=str(out), quiet=True)
        check_config(config.resolved())
    except HandgradError as exc:
        raise ApiError(400, str(exc)) from None
    return config, {*values, "out", "quiet"}, name


async def train_start(request: Request) -> JSONResponse:
    s = _state(request)
    assert s.trainer is not None
    body = await read_json(request, 4096)
    config, given, name = train_config(body, s.runs)
    s.runs.mkdir(parents=True, exist_ok=True)
    try:
        s.trainer.start(config, given, name)
    except Busy as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse({"run": name, "state": s.trainer.state}, status_code=202)


async def train_resume(request: Request) -> JSONResponse:
    s = _state(request)
    assert s.trainer is not None
    body = await read_json(request, 4096)
    unknown = sorted(set(body) - {"run", "epochs"})
    if unknown:
        raise ApiError(400, f"unknown option(s) {', '.join(unknown)}; give run and epochs")
    last = checkpoint_path(s.runs, body.get("run"), "last")
    config = TrainConfig(resume=str(last), out=str(last.parent), quiet=True)
    given = {"resume", "out", "quiet"}
    if body.get("epochs") is not None:
        config.epochs = _int(body["epochs"], "epochs", 1, MAX_EPOCHS)
        given.add("epochs")
    try:  # checked here, so that a run that cannot go on is a 400, not a failed worker
        merged, ckpt = await run_in_threadpool(config_for_resume, config, given)
    except HandgradError as exc:
        raise ApiError(400, str(exc)) from None
    done = int(ckpt.info.get("epoch", 0))
    if merged.epochs is not None and done >= merged.epochs:
        raise ApiError(
            400,
            f"run {last.parent.name} has {done} of {merged.epochs} epochs; give epochs > {done}",
        )
    try:
        s.trainer.start(config, given, last.parent.name)
    except Busy as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse({"run": last.parent.name, "state": s.trainer.state}, status_code=202)


async def train_stop(request: Request) -> JSONResponse:
    s = _state(request)
    assert s.trainer is not None
    if not s.trainer.stop():
        raise ApiError(409, f"no run is training (state: {s.trainer.state})")
    return JSONResponse({"run": s.trainer.run, "state": s.trainer.state}, status_code=202)


async def train_status(request: Request) -> JSONResponse:
    s = _state(request)
    assert s.trainer is not None
    return JSONResponse(s.trainer.status())


async def train_events(request: Request) -> StreamingResponse:
    """Server-sent events: every event of the current run so far, then each as it happens."""
    state = _state(request)
    trainer = state.trainer
    assert trainer is not None
    header = request.headers.get("last-event-id", "0")
    after = int(header) if header.isdigit() else 0

    async def stream() -> AsyncIterator[str]:
        watcher, past = trainer.watch()
        last = after
        try:
            yield "retry: 2000\n\n"
            for event in past:
                if event["seq"] > last:
                    last = event["seq"]
                    yield _sse(event)
            quiet = 0.0
            while not state.closing:
                try:
                    event = await asyncio.wait_for(watcher.get(), 0.5)
                except TimeoutError:
                    quiet += 0.5
                    if quiet >= 15:  # a comment line keeps proxies from closing the stream
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    continue
                quiet = 0.0
                if event["seq"] > last:
                    last = event["seq"]
                    yield _sse(event)
        finally:
            trainer.unwatch(watcher)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"


# ------------------------------------------------------------------------------- errors
async def api_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    if isinstance(exc, NotFound):
        return JSONResponse({"error": str(exc)}, status_code=404)
    if isinstance(exc, DrawingError | HandgradError):
        return JSONResponse({"error": str(exc)}, status_code=400)
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{exc.detail}</p>", exc.status_code)


def create_app(runs: str | Path = "runs", checkpoint: str | Path | None = None) -> Starlette:
    """The app, serving the runs in ``runs`` and drawings with ``checkpoint`` (if given)."""
    state = State(Path(runs))
    if checkpoint is not None:
        state.load(Path(checkpoint))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.trainer = Trainer(asyncio.get_running_loop())
        try:
            yield
        finally:
            await run_in_threadpool(state.trainer.shutdown)

    routes = [
        *(Route(path, page) for path in PAGES),
        Route("/runs/{name}/report", report_page),
        Route("/api/health", health),
        Route("/api/model", get_model, methods=["GET"]),
        Route("/api/model", set_model, methods=["POST"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/runs", list_runs_api),
        Route("/api/runs/{name}", one_run),
        Route("/api/options", options),
        Route("/api/train", train_status, methods=["GET"]),
        Route("/api/train", train_start, methods=["POST"]),
        Route("/api/train/stop", train_stop, methods=["POST"]),
        Route("/api/train/resume", train_resume, methods=["POST"]),
        Route("/api/train/events", train_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {
        k: api_error for k in (ApiError, NotFound, DrawingError, HandgradError, HTTPException)
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.hg = state
    return app
