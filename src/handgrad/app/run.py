"""A training run from a config: data, model, loss, optimizer, schedule, callbacks, outputs.

``handgrad train`` and ``handgrad lr-find`` are thin layers over :func:`train` and
:func:`build_run`. A run writes into its output folder::

    best.safetensors + best.json    the epoch with the best validation accuracy
    last.safetensors + last.json    the latest epoch, with everything needed to --resume
    history.png                     loss, accuracy and learning rate against the step
    metrics.json                    the final metrics, the best epoch, the config
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from handgrad._io import write_json
from handgrad._version import __version__
from handgrad.app.ui import download_bar
from handgrad.data import DataLoader, Dataset, load_dataset
from handgrad.distributed.data_parallel import (
    AverageTrainMetrics,
    DataParallelCallback,
    DistContext,
)
from handgrad.errors import HandgradError
from handgrad.nn.models import MODELS, build_model
from handgrad.nn.module import Module
from handgrad.optim.optimizers import OPTIMIZERS
from handgrad.optim.schedules import make_schedule
from handgrad.train.callbacks import (
    Augment,
    Checkpointer,
    EarlyStopping,
    LRScheduler,
    Metrics,
    NonFiniteGuard,
    Progress,
    Recorder,
    ValidLoss,
    format_metrics,
)
from handgrad.train.checkpoint import load_checkpoint, restore_learner
from handgrad.train.devices import resolve_device
from handgrad.train.learner import Callback, CancelFitException, Learner
from handgrad.train.recipes import make_loss, metric_for, recipe_for

#: Options that may change when a run is resumed; every other one comes from the checkpoint.
RESUMABLE = (
    "epochs",
    "out",
    "quiet",
    "device",
    "stop_after",
    "data",
    "patience",
    "plots",
    "threads",
    "fast",
)
VALID_BATCH = 1024  # validation has no backward pass: large batches, fewer Python steps


@dataclass
class TrainConfig:
    """Everything that defines a run. ``None`` means "the model's recipe decides"."""

    data: str = "mnist-sample"
    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    epochs: int | None = None
    bs: int | None = None
    lr: float | None = None
    opt: str | None = None
    schedule: str | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    shift: int | None = None
    seed: int = 0
    device: str = "cpu"
    patience: int | None = None
    out: str | None = None
    quiet: bool = False
    stop_after: int | None = None
    resume: str | None = None
    plots: str | None = None  # folder for every plot (handgrad.app.plots.run)
    threads: str = "auto"
    fast: bool = False  # FastLearner: the same run, its steps through the compiled fast path

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` recipe field filled from the model's recipe."""
        recipe = recipe_for(self.model)
        filled = {
            f.name: getattr(recipe, f.name)
            for f in dataclasses.fields(recipe)
            if hasattr(self, f.name) and getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **filled)

    def recipe_dict(self) -> dict[str, Any]:
        """The fields that define the computation (saved in checkpoints and metrics.json)."""
        skip = {"out", "quiet", "stop_after", "resume", "plots", "threads", "fast"}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        return d


@dataclass
class Run:
    """A built run: the learner and what the checkpoints and outputs need."""

    config: TrainConfig
    dataset: Dataset
    learn: Learner
    info: dict[str, Any]
    out: Path | None
    loss_name: str
    extra: dict[str, Any] = field(default_factory=dict)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"256,128"`` -> ``(256, 128)``."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise HandgradError(f"--hidden {text!r}: expected positive widths like 256,128")
    return sizes


def resolve_threads(threads: str, device: torch.device) -> int:
    """CPU threads for the run: a number, or ``auto``.

    ``auto`` keeps torch's default (every core, or ``OMP_NUM_THREADS``) on an idle machine and
    uses only the cores that the load average says are free otherwise. The reason is measured:
    OpenMP threads spin-wait at every parallel operation, and on a busy 2-core machine two threads
    ran the default recipe's epoch 10 to 40 times slower than one thread did (0.3 s against 4 to
    12 s), while on an idle one the second thread helps. Results do not depend on the thread
    count in our tests (same losses with 1 and 2 threads); pin ``--threads`` to be certain.
    """
    if threads != "auto":
        try:
            n = int(threads)
        except ValueError:
            n = 0
        if n < 1:
            raise HandgradError(f"--threads {threads!r}: give a positive number or auto")
        return n
    cores = torch.get_num_threads()
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return cores
    free = cores - os.getloadavg()[0]
    return max(1, min(cores, round(free)))


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The model builder's keyword arguments from the config (``hidden`` when it takes it)."""
    if config.model not in MODELS:
        raise HandgradError(f"--model {config.model!r}: unknown; choose one of {', '.join(MODELS)}")
    kwargs: dict[str, Any] = {}
    accepted = inspect.signature(MODELS[config.model]).parameters
    if config.hidden is not None:
        if "hidden" not in accepted:
            raise HandgradError(f"--hidden: model {config.model!r} has no hidden widths to set")
        kwargs["hidden"] = list(config.hidden)
    if config.dropout is not None:
        if "dropout" not in accepted:
            raise HandgradError(f"--dropout: model {config.model!r} has no dropout to set")
        kwargs["dropout"] = config.dropout
    return kwargs


def data_info(dataset: Dataset, mean: float, std: float) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "image_shape": list(dataset.image_shape),
        "n_features": int(math.prod(dataset.image_shape)),
        "mean": mean,
        "std": std,
    }


def _check_config(c: TrainConfig) -> None:
    checks = [
        (c.epochs is not None and c.epochs >= 1, f"--epochs {c.epochs}: must be >= 1"),
        (c.bs is not None and c.bs >= 1, f"--bs {c.bs}: must be >= 1"),
        (c.lr is not None and c.lr > 0 and math.isfinite(c.lr), f"--lr {c.lr}: must be > 0"),
        (c.opt in OPTIMIZERS, f"--opt {c.opt!r}: choose one of {', '.join(OPTIMIZERS)}"),
        (c.shift is not None and 0 <= c.shift <= 8, f"--shift {c.shift}: must be in 0..8"),
        (c.weight_decay is not None and c.weight_decay >= 0, "--weight-decay must be >= 0"),
        (
            c.label_smoothing is not None and 0 <= c.label_smoothing < 1,
            "--label-smoothing must be in [0, 1)",
        ),
        (c.patience is None or c.patience >= 1, f"--patience {c.patience}: must be >= 1"),
        (c.dropout is None or 0 <= c.dropout < 1, f"--dropout {c.dropout}: must be in [0, 1)"),
        (c.stop_after is None or c.stop_after >= 1, "--stop-after must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise HandgradError(message)


def make_optimizer(name: str, params: list[Any], lr: float, weight_decay: float) -> Any:
    if name == "sgd":
        return OPTIMIZERS["sgd"](params, lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay)


def build_run(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    console: Console | None = None,
    out: Path | None = None,
    callbacks: list[Callback] | None = None,
    for_training: bool = True,
    ctx: DistContext | None = None,
) -> Run:
    """Build the learner that ``config`` describes (``config`` already resolved).

    With ``ctx`` (data-parallel training, :mod:`handgrad.distributed`) this is one rank's
    learner: rank 0 loads (downloads) the data first, the training loader gives this rank its
    shard with ``bs / world_size`` rows per batch (``bs`` stays the global batch), the
    gradients are averaged by a :class:`~handgrad.distributed.DataParallelCallback`, and the
    validation set is whole on every rank, so every rank computes the same metrics.
    """
    _check_config(config)
    world, rank = (ctx.world_size, ctx.rank) if ctx else (1, 0)
    if config.bs % world:  # type: ignore[operator]
        raise HandgradError(
            f"--bs {config.bs}: the global batch must split evenly between {world} processes; "
            f"give a multiple of {world}"
        )
    device = ctx.device if ctx else resolve_device(config.device)
    if ctx is None or config.threads != "auto":  # data-parallel ranks share the cores already
        torch.set_num_threads(resolve_threads(str(config.threads), device))
    if dataset is None:
        with ctx.main_first("loading the dataset") if ctx else nullcontext():
            bar = download_bar if not config.quiet and rank == 0 else None
            dataset = load_dataset(config.data, progress=bar)
    n_features = int(math.prod(dataset.image_shape))
    torch.manual_seed(config.seed + rank)  # dropout masks differ between ranks
    gen = torch.Generator().manual_seed(config.seed)
    kwargs = model_kwargs(config)
    try:
        model = build_model(
            config.model,
            in_features=n_features,
            n_classes=len(dataset.classes),
            generator=gen,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise HandgradError(f"--model {config.model}: {exc}") from exc
    model.to(device)
    recipe_loss = recipe_for(config.model).loss
    loss_fn = make_loss(recipe_loss, label_smoothing=config.label_smoothing or 0.0)
    train_x = dataset.train.x
    mean, std = float(train_x.mean()), float(train_x.std())
    train_dl = DataLoader(
        train_x,
        dataset.train.y,
        config.bs // world,  # type: ignore[operator]
        shuffle=True,
        seed=config.seed,
        device=device,
        mean=mean,
        std=std,
        rank=rank,
        world_size=world,
    )
    valid_dl = DataLoader(
        dataset.valid.x,
        dataset.valid.y,
        max(config.bs, VALID_BATCH),
        device=device,
        mean=mean,
        std=std,
    )
    opt = make_optimizer(config.opt, model.parameters(), config.lr, config.weight_decay)
    total_steps = config.epochs * len(train_dl)
    info = {
        "model": {"name": config.model, "kwargs": kwargs},
        "loss": recipe_loss,
        "config": config.recipe_dict(),
        "data": data_info(dataset, mean, std),
    }
    cbs: list[Callback] = []
    if ctx and ctx.distributed:
        cbs += [DataParallelCallback(ctx), AverageTrainMetrics(ctx)]
    cbs += [
        Metrics(accuracy=metric_for(recipe_loss)),
        Recorder(),
        NonFiniteGuard(),
    ]
    if config.label_smoothing:
        cbs.append(ValidLoss(make_loss(recipe_loss)))
    if for_training:
        cbs.append(LRScheduler(make_schedule(config.schedule, config.lr, total_steps)))
        if config.shift and len(dataset.image_shape) == 3:
            fill = -mean / std  # the background (pixel 0) after normalisation
            cbs.append(
                Augment(
                    config.shift,
                    seed=config.seed + rank,
                    image_shape=dataset.image_shape,
                    fill=fill,
                )
            )
        if out is not None:
            cbs.append(Checkpointer(out, info, monitor="valid_accuracy", mode="max"))
        if config.patience:
            cbs.append(EarlyStopping("valid_loss", patience=config.patience))
        if console is not None:
            cbs.append(Progress(console, quiet=config.quiet))
    cbs += callbacks or []
    learner: type[Learner] = Learner
    if config.fast:
        from handgrad.fast.learner import FastLearner

        learner = FastLearner
    learn = learner(model, loss_fn, opt, train_dl, valid_dl, cbs, device=device)
    return Run(config, dataset, learn, info, out, recipe_loss)


class StopAfter(Callback):
    """End this invocation after ``epochs`` epochs (the checkpoint lets ``--resume`` go on)."""

    order = 60

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.stopped = False

    def after_epoch(self, learn: Learner) -> None:
        if learn.last_pass and learn.epoch + 1 == self.epochs and learn.epoch + 1 < learn.n_epochs:
            self.stopped = True
            raise CancelFitException()


def default_out(model: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{stamp}-{model}"
    i = 2
    while out.exists():
        out = Path("runs") / f"{stamp}-{model}-{i}"
        i += 1
    return out


def config_for_resume(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, Any]:
    """The saved run's config, with the options in ``given`` that may change applied."""
    ckpt = load_checkpoint(str(config.resume))
    saved = ckpt.info.get("config")
    if not isinstance(saved, dict):
        raise HandgradError(f"{ckpt.path}: no training config in the sidecar; cannot resume")
    fixed = sorted(given - set(RESUMABLE) - {"resume"})
    if fixed:
        opts = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise HandgradError(
            f"{opts}: cannot change when resuming (the run continues with its saved settings); "
            f"only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may be given"
        )
    saved = dict(saved)
    if saved.get("hidden") is not None:
        saved["hidden"] = tuple(saved["hidden"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    for k in given & set(RESUMABLE):
        setattr(merged, k, getattr(config, k))
    merged.resume = config.resume
    if "out" not in given:
        merged.out = str(ckpt.path.parent)
    return merged, ckpt


def train(
    config: TrainConfig,
    console: Console,
    *,
    given: set[str] = frozenset(),  # type: ignore[assignment]
    dataset: Dataset | None = None,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """Run ``handgrad train``; returns the final metrics (also written to metrics.json).

    With ``ctx``, this is one rank of a data-parallel run (see :func:`build_run`): only rank 0
    prints, writes checkpoints, the plot and metrics.json (``config.out`` must then be set, so
    that every rank agrees on it); the others return ``{}``.
    """
    main = ctx is None or ctx.is_main
    ckpt = None
    if config.resume:
        config, ckpt = config_for_resume(config, set(given))
    config = config.resolved()
    out = Path(config.out) if config.out else default_out(config.model)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    stop = StopAfter(config.stop_after) if config.stop_after else None
    run = build_run(
        config,
        dataset=dataset,
        console=console if main else None,
        out=out if main else None,
        callbacks=[stop] if stop else [],
        ctx=ctx,
    )
    learn = run.learn
    stats = None
    if config.plots and main:  # per-layer statistics for the plots (they only read)
        from handgrad.app.plots.run import stats_callbacks

        stats = stats_callbacks(config.epochs * len(learn.train_dl))  # type: ignore[arg-type]
        learn.add_callbacks(*stats)
    start_epoch, start_step = 0, 0
    if ckpt is not None:
        if ckpt.info.get("data", {}).get("n_features") != run.info["data"]["n_features"]:
            raise HandgradError(
                f"{ckpt.path}: trained on {ckpt.info['data']['n_features']} inputs per image, "
                f"but {config.data} has {run.info['data']['n_features']}; resume on the same data"
            )
        start_epoch, start_step = restore_learner(learn, ckpt)
        if start_epoch >= config.epochs:
            raise HandgradError(
                f"{ckpt.path}: the run already has {start_epoch} epochs; give --epochs N with "
                f"N > {start_epoch} to train further"
            )
    if main:
        _print_header(console, run, start_epoch)
    started = time.perf_counter()
    try:
        learn.fit(config.epochs, start_epoch=start_epoch, start_step=start_step)
    except KeyboardInterrupt:
        last = out / "last.safetensors"
        if last.exists():
            say(console, f"interrupted; continue with: handgrad train --resume {last}")
        raise
    seconds = time.perf_counter() - started
    if not main:
        return {}
    history = learn.recorder.history
    if not history:
        raise HandgradError("no epoch completed; nothing to report")
    learn.recorder.plot(out / "history.png", title=_title(run))
    final = {k: v for k, v in history[-1].items() if k not in ("lr", "seconds")}
    checkpointer = learn.checkpointer
    result = {
        **final,
        "train_seconds": round(seconds, 3),
        "best": {"epoch": checkpointer.best_epoch, "valid_accuracy": checkpointer.best},
        "stopped_early": getattr(learn, "stop_reason", None),
        "data": run.info["data"]
        | {"train": len(run.dataset.train), "valid": len(run.dataset.valid)},
        "model": run.info["model"],
        "config": config.recipe_dict(),
        "processes": ctx.world_size if ctx else 1,
        "threads": torch.get_num_threads(),
        "versions": {"handgrad": __version__, "torch": torch.__version__},
    }
    if config.plots:
        from handgrad.app.plots.run import write_run_plots

        written = write_run_plots(run, config.plots, stats)
        result["plots"] = str(Path(config.plots).resolve())
        say(console, f"{len(written)} plots in {config.plots}; one page: handgrad report {out}")
    write_json(out / "metrics.json", result)
    if getattr(learn, "stop_reason", None):
        say(console, learn.stop_reason)
    if stop is not None and stop.stopped:
        say(
            console,
            f"stopped after epoch {final['epoch']} of {config.epochs} (--stop-after); continue "
            f"with: handgrad train --resume {out / 'last.safetensors'}",
        )
    say(
        console,
        f"trained {len(history) - _resumed_rows(history, start_epoch)} epoch(s) in "
        f"{seconds:.1f} s; best valid_accuracy {checkpointer.best:.4f} at epoch "
        f"{checkpointer.best_epoch}: {checkpointer.best_path}; plot {out / 'history.png'}; "
        f"metrics {out / 'metrics.json'}",
    )
    say(console, format_metrics({k: v for k, v in final.items() if k.startswith("valid_")}, " "))
    return result


def say(console: Console, text: str) -> None:
    """Print one plain line: no markup, no highlighting, never wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _resumed_rows(history: list[dict[str, float]], start_epoch: int) -> int:
    return min(start_epoch, len(history))


def _title(run: Run) -> str:
    c = run.config
    title = f"{c.model} on {run.dataset.name}: {c.opt} lr {c.lr:g} {c.schedule}, bs {c.bs}"
    if c.label_smoothing:
        title += (
            f"\n(training loss with label smoothing {c.label_smoothing:g}; validation loss "
            "without it)"
        )
    return title


def describe_model(model: Module, n_features: int) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    widths = [n_features]
    for m in model.modules():
        out_features = getattr(m, "out_features", None)
        if isinstance(out_features, int):
            widths.append(out_features)
    return f"{'-'.join(map(str, widths))}, {n_params:,} parameters"


def _print_header(console: Console, run: Run, start_epoch: int) -> None:
    c, ds = run.config, run.dataset
    shape = "x".join(map(str, ds.image_shape))
    steps = len(run.learn.train_dl)  # type: ignore[arg-type]
    extras = []
    if c.shift:
        extras.append(f"random shifts ±{c.shift} px")
    if c.label_smoothing:
        extras.append(f"label smoothing {c.label_smoothing:g}")
    if c.weight_decay:
        extras.append(f"weight decay {c.weight_decay:g}")
    resumed = f", resuming at epoch {start_epoch + 1}" if start_epoch else ""
    say(
        console,
        f"data {ds.name}: {len(ds.train):,} train / {len(ds.valid):,} valid images {shape}, "
        f"{len(ds.classes)} classes",
    )
    say(
        console,
        f"model {c.model} ({describe_model(run.learn.model, run.info['data']['n_features'])}); "
        f"loss {run.loss_name}; {c.opt} lr {c.lr:g}, {c.schedule} schedule; {c.epochs} epochs "
        f"x {steps} steps of {c.bs}{'; ' + ', '.join(extras) if extras else ''}; seed {c.seed}; "
        f"device {run.learn.device}{_processes(run)}, {torch.get_num_threads()} thread(s); "
        f"out {run.out}{resumed}",
    )


def _processes(run: Run) -> str:
    dp = getattr(run.learn, "data_parallel", None)
    if dp is None or not dp.ctx.distributed:
        return ""
    per_rank = run.learn.train_dl.batch_size  # type: ignore[union-attr]
    return f" x {dp.ctx.world_size} processes ({dp.ctx.backend}, {per_rank} rows each)"
