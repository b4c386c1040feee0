"""A training run assembled from its config: data, model, loss, optimizer, schedule, callbacks.

:func:`build_run` is what ``handgrad train`` (through :mod:`handgrad.app.fit`), ``handgrad
lr-find`` and the run's LR-finder plot share, so all three train the same learner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from handgrad.app.config import TrainConfig, check_config, model_kwargs
from handgrad.app.progress import Progress
from handgrad.app.threads import resolve_threads
from handgrad.app.ui import download_bar
from handgrad.data import DataLoader, Dataset, load_dataset
from handgrad.data.augment import flips_allowed
from handgrad.errors import HandgradError
from handgrad.fast.learner import FastLearner
from handgrad.fast.plan import make_plan
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import OPTIMIZERS
from handgrad.optim.schedules import make_schedule
from handgrad.train.callbacks import (
    Augment,
    Checkpointer,
    EarlyStopping,
    LRScheduler,
    Metrics,
    NonFiniteGuard,
    Recorder,
    ValidLoss,
    make_loggers,
)
from handgrad.train.devices import resolve_device
from handgrad.train.learner import Callback, Learner
from handgrad.train.recipes import make_loss, metric_for, recipe_for

if TYPE_CHECKING:
    from handgrad.distributed import DistContext

VALID_BATCH = 1024  # validation has no backward pass: large batches, fewer Python steps


@dataclass
class Run:
    """A built run: the learner and what the checkpoints and outputs need."""

    config: TrainConfig
    dataset: Dataset
    learn: Learner
    info: dict[str, Any]
    out: Path | None
    loss_name: str
    schedule: Callable[[int], float] | None = None  # the learning rate at each step


def run_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each step of the run: the schedule spans the epochs from
    ``schedule_from`` to ``schedule_until`` (the end of the run when ``None``) and keeps its
    last rate after (see :mod:`handgrad.app.config`)."""
    start = config.schedule_from * steps_per_epoch
    end = (config.schedule_until or config.epochs) * steps_per_epoch  # type: ignore[operator]
    schedule = make_schedule(config.schedule, config.lr, end - start)  # type: ignore[arg-type]
    return lambda step: schedule(max(step - start, 0))


def schedule_note(run: Run) -> str | None:
    """One line when a resumed run goes on past the end of its schedule (``None`` otherwise)."""
    c, end = run.config, run.config.schedule_until
    if end is None or run.schedule is None or c.epochs <= end:  # type: ignore[operator]
        return None
    last_lr = run.schedule(end * len(run.learn.train_dl) - 1)  # type: ignore[arg-type]
    return (
        f"the {c.schedule} schedule ends at epoch {end}; epochs {end + 1}-{c.epochs} keep its "
        f"last learning rate, {last_lr:.1e} (to fine-tune at another, add --lr LR and "
        "--schedule constant or onecycle: a new schedule from this epoch on)"
    )


def data_info(dataset: Dataset, mean: float, std: float) -> dict[str, Any]:
    """The data description stored in every checkpoint (what ``handgrad predict`` needs)."""
    return {
        "name": dataset.name,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "image_shape": list(dataset.image_shape),
        "n_features": int(math.prod(dataset.image_shape)),
        "mean": mean,
        "std": std,
    }


def make_optimizer(name: str, params: list[Any], lr: float, weight_decay: float) -> Any:
    """The optimizer ``name``; SGD gets Nesterov momentum 0.9, as its recipe assumes."""
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
    check_config(config)
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
            dataset = load_dataset(
                config.data, data_dir=config.data_dir, download=not config.no_download, progress=bar
            )
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
    if not 0 < std < math.inf:
        raise HandgradError(
            f"{dataset.source}: every training pixel is {mean:g} (no variance): nothing to "
            "learn from, and it cannot be normalised; check the data"
        )
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
    info = {
        "model": {"name": config.model, "kwargs": kwargs},
        "loss": recipe_loss,
        "config": config.recipe_dict(),
        "data": data_info(dataset, mean, std),
    }
    schedule = run_schedule(config, len(train_dl)) if for_training else None
    cbs: list[Callback] = []
    if ctx and ctx.distributed:
        # imported here, so that a single-process run never imports handgrad.distributed
        from handgrad.distributed import AverageTrainMetrics, DataParallelCallback

        cbs += [DataParallelCallback(ctx), AverageTrainMetrics(ctx)]
    cbs += [
        Metrics(accuracy=metric_for(recipe_loss)),
        Recorder(),
        NonFiniteGuard(),
    ]
    if config.label_smoothing:
        cbs.append(ValidLoss(make_loss(recipe_loss)))
    if for_training:
        cbs.append(LRScheduler(schedule))  # type: ignore[arg-type]
        flip = bool(config.flip) and flips_allowed(dataset.classes)  # never mirror digits
        if (config.shift or flip or config.erase) and len(dataset.image_shape) == 3:
            fill = -mean / std  # the background (pixel 0) after normalisation
            cbs.append(
                Augment(
                    config.shift,
                    flip=flip,
                    erase=config.erase or 0.0,
                    seed=config.seed + rank,
                    image_shape=dataset.image_shape,
                    fill=fill,
                )
            )
        if out is not None:
            cbs.append(Checkpointer(out, info, monitor="valid_accuracy", mode="max"))
            cbs += make_loggers(config.logger, out)
        if config.patience:
            cbs.append(EarlyStopping("valid_loss", patience=config.patience))
        if console is not None:
            cbs.append(Progress(console, quiet=config.quiet))
    cbs += callbacks or []
    learner: type[Learner] = Learner
    if config.fast and not make_plan(model, loss_fn).reason:
        # the default: a model the fast path cannot run (a cnn) trains as usual, without a word
        learner = FastLearner
    # quiet: the CLI reports through its own Progress (rich), or not at all (other ranks, lr-find)
    learn = learner(
        model, loss_fn, opt, train_dl, valid_dl, cbs,
        device=device, quiet=True, subnormals=config.subnormals,
    )  # fmt: skip
    return Run(config, dataset, learn, info, out, recipe_loss, schedule)
