"""A training run assembled from its config: data, model, loss, optimizer, schedule, callbacks.

:func:`build_run` is what ``handgrad train`` (through :mod:`handgrad.app.fit`), ``handgrad
lr-find`` and the run's LR-finder plot share, so all three train the same learner.
"""

from __future__ import annotations

import math
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
from handgrad.errors import HandgradError
from handgrad.fast.learner import FastLearner
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
        learner = FastLearner
    learn = learner(model, loss_fn, opt, train_dl, valid_dl, cbs, device=device)
    return Run(config, dataset, learn, info, out, recipe_loss)
