"""``handgrad train`` from a config to a run folder: resume, fit, write the outputs, report.

:func:`train` builds the run (:func:`handgrad.app.run.build_run`), fits it and writes into
its output folder::

    best.safetensors + best.json    the epoch with the best validation accuracy
    last.safetensors + last.json    the latest epoch, with everything needed to --resume
    history.png                     loss, accuracy and learning rate against the step
    metrics.json                    the final metrics, the best epoch, the config
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from handgrad._io import write_json
from handgrad._version import __version__
from handgrad.app.config import TrainConfig, config_for_resume
from handgrad.app.outputs import check_train_outputs, clear_run
from handgrad.app.plots.run import plot_run_history, stats_callbacks, write_run_plots
from handgrad.app.progress import format_metrics, say
from handgrad.app.run import Run, build_run, schedule_note
from handgrad.app.text import plural
from handgrad.data import Dataset
from handgrad.errors import HandgradError
from handgrad.nn.module import Module
from handgrad.train.callbacks import Augment
from handgrad.train.checkpoint import restore_learner
from handgrad.train.learner import Callback, CancelFitException, Learner

if TYPE_CHECKING:
    from handgrad.distributed import DistContext


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
    """``runs/<date>-<time>-<model>``, with a number appended if that folder exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{stamp}-{model}"
    i = 2
    while out.exists():
        out = Path("runs") / f"{stamp}-{model}-{i}"
        i += 1
    return out


def train(
    config: TrainConfig,
    console: Console,
    *,
    given: set[str] = frozenset(),  # type: ignore[assignment]
    dataset: Dataset | None = None,
    ctx: DistContext | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Run ``handgrad train``; returns the final metrics (also written to metrics.json).

    With ``ctx``, this is one rank of a data-parallel run (see :func:`build_run`): only rank 0
    prints, writes checkpoints, the plot and metrics.json (``config.out`` must then be set, so
    that every rank agrees on it); the others return ``{}``. ``callbacks`` join the learner's
    (``handgrad serve`` streams the run to the browser through one).
    """
    main = ctx is None or ctx.is_main
    ckpt = None
    if config.resume:
        config, ckpt = config_for_resume(config, set(given))
        if int(ckpt.info.get("epoch", 0)) >= config.epochs:  # type: ignore[operator]
            raise HandgradError(
                f"{ckpt.path}: the run already has {ckpt.info['epoch']} epochs; give --epochs N "
                f"with N > {ckpt.info['epoch']} to train further"
            )
    config = config.resolved()
    out = Path(config.out) if config.out else default_out(config.model)
    if main:
        resumed_from = ckpt.path.parent if ckpt else None
        check_train_outputs(
            out, config.plots, resumed_from=resumed_from, overwrite=config.overwrite
        )
    stop = StopAfter(config.stop_after) if config.stop_after else None
    run = build_run(
        config,
        dataset=dataset,
        console=console if main else None,
        out=out if main else None,
        callbacks=[*callbacks, *([stop] if stop else [])],
        ctx=ctx,
    )
    created = main and not out.exists()
    if main:  # the data loaded and the model built: only now is an old run replaced
        if config.overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
    learn = run.learn
    stats = None
    if config.plots and main:  # per-layer statistics for the plots (they only read)
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
    if main:
        _print_header(console, run, start_epoch)
        if not config.quiet and not start_epoch:
            say(console, str(learn.model.summary((run.info["data"]["n_features"],))))
        if ckpt is not None and (note := schedule_note(run)):
            say(console, note)
    started = time.perf_counter()
    try:
        learn.fit(config.epochs, start_epoch=start_epoch, start_step=start_step)
    except BaseException as exc:
        last = out / "last.safetensors"
        if isinstance(exc, KeyboardInterrupt) and last.exists():
            say(console, f"interrupted; continue with: handgrad train --resume {last}")
        if created and not any(out.iterdir()):
            out.rmdir()  # a run that saved nothing leaves no empty folder behind
        raise
    seconds = time.perf_counter() - started
    if not main:
        return {}
    history = learn.recorder.history
    if not history:
        raise HandgradError("no epoch completed; nothing to report")
    plot_run_history(run, out / "history.png")
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
        written = write_run_plots(run, config.plots, stats)
        result["plots"] = str(Path(config.plots).resolve())
        say(
            console,
            f"{plural(len(written), 'plot')} in {config.plots}; one page: handgrad report {out}",
        )
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
        f"trained {plural(len(history) - min(start_epoch, len(history)), 'epoch')} in "
        f"{seconds:.1f} s; best valid_accuracy {checkpointer.best:.4f} at epoch "
        f"{checkpointer.best_epoch}: {checkpointer.best_path}; plot {out / 'history.png'}; "
        f"metrics {out / 'metrics.json'}",
    )
    say(console, format_metrics({k: v for k, v in final.items() if k.startswith("valid_")}, " "))
    return result


def describe_model(model: Module, n_features: int) -> str:
    """``784-512-256-10, 535,818 parameters``: the input, each linear or convolutional layer's
    width (``conv32/2``: 32 channels, stride 2; ``res64/2``: a residual block, its inner
    layers not listed again), pooling, and the parameter count."""
    n_params = sum(p.numel() for p in model.parameters())
    parts = [str(n_features)]
    inside: list[str] = []  # names of the blocks described whole
    for name, m in model.named_modules():
        if any(name.startswith(block + ".") for block in inside):
            continue
        if isinstance(getattr(m, "out_features", None), int):
            parts.append(str(m.out_features))
        elif isinstance(getattr(m, "out_channels", None), int):
            geometry = getattr(m, "geometry", None)
            stride = geometry.stride[0] if geometry is not None else getattr(m, "stride", 1)
            stride = stride[0] if isinstance(stride, tuple) else stride
            block = "Res" in type(m).__name__
            if block:
                inside.append(name)
            label = "res" if block else "conv"
            parts.append(f"{label}{m.out_channels}" + (f"/{stride}" if stride != 1 else ""))
        elif "Pool" in (kind := type(m).__name__):
            parts.append("avgpool" if "Avg" in kind else "maxpool")
    return f"{'-'.join(parts)}, {n_params:,} parameters"


def _print_header(console: Console, run: Run, start_epoch: int) -> None:
    c, ds = run.config, run.dataset
    shape = "x".join(map(str, ds.image_shape))
    steps = len(run.learn.train_dl)  # type: ignore[arg-type]
    extras = []
    augment = next((cb for cb in run.learn.callbacks if isinstance(cb, Augment)), None)
    if augment is not None and augment.max_shift:
        extras.append(f"random shifts ±{augment.max_shift} px")
    if augment is not None and augment.flip:
        extras.append("horizontal flips")
    if augment is not None and augment.erase:
        extras.append(f"random erasing p={augment.erase:g}")
    if c.label_smoothing:
        extras.append(
            f"label smoothing {c.label_smoothing:g} (in train_loss; valid_loss is without it)"
        )
    if c.weight_decay:
        extras.append(f"weight decay {c.weight_decay:g}")
    resumed = f", resuming at epoch {start_epoch + 1}" if start_epoch else ""
    extra = "; " + ", ".join(extras) if extras else ""
    say(
        console,
        f"data {ds.name}: {len(ds.train):,} train / {len(ds.valid):,} valid images {shape}, "
        f"{plural(len(ds.classes), 'class', 'classes')}",
    )
    say(
        console,
        f"model {c.model} ({describe_model(run.learn.model, run.info['data']['n_features'])}); "
        f"loss {run.loss_name}; {c.opt} lr {c.lr:g}, {c.schedule} schedule; "
        f"{plural(c.epochs, 'epoch')} x {plural(steps, 'step')} of {c.bs}{extra}; seed {c.seed}; "
        f"device {run.learn.device}{_processes(run)}, {plural(torch.get_num_threads(), 'thread')}; "
        f"out {run.out}{resumed}",
    )


def _processes(run: Run) -> str:
    dp = getattr(run.learn, "data_parallel", None)
    if dp is None or not dp.ctx.distributed:
        return ""
    per_rank = run.learn.train_dl.batch_size  # type: ignore[union-attr]
    return f" x {dp.ctx.world_size} processes ({dp.ctx.backend}, {per_rank} rows each)"
