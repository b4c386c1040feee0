"""``TrainConfig``: what defines a training run, filled from the model's recipe, checked, and
merged with a checkpoint's saved config when a run is resumed.

A resumed run keeps its learning-rate schedule: ``--epochs`` past the schedule's end train at
its last rate (``handgrad train`` says so), and ``--lr``/``--schedule`` start a new schedule
from the resumed epoch to the end (fine-tuning); ``schedule_from``/``schedule_until`` record
which epochs the schedule spans, so a resumed fine-tuning run follows the same curve.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from handgrad.errors import HandgradError
from handgrad.nn.models import MODELS
from handgrad.optim.optimizers import OPTIMIZERS
from handgrad.train.checkpoint import Checkpoint, load_checkpoint
from handgrad.train.recipes import recipe_for
from handgrad.train.subnormals import POLICIES

#: Options that may change when a run is resumed; every other one comes from the checkpoint.
RESUMABLE = (
    "epochs",
    "lr",
    "schedule",
    "out",
    "quiet",
    "device",
    "stop_after",
    "data",
    "patience",
    "plots",
    "threads",
    "fast",
    "data_dir",
    "no_download",
    "logger",
)
#: Fields that say where and how a run goes, not what it computes (not saved as its recipe).
NOT_RECIPE = frozenset(
    {"out", "quiet", "stop_after", "resume", "plots", "threads", "fast", "overwrite"}
    | {"data_dir", "no_download", "logger"}
)


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
    flip: bool | None = None  # horizontal flips, where the data allows them (never digits)
    erase: float | None = None  # random-erasing probability per image
    seed: int = 0
    device: str = "cpu"
    patience: int | None = None
    out: str | None = None
    quiet: bool = False
    stop_after: int | None = None
    resume: str | None = None
    plots: str | None = None  # folder for every plot (handgrad.app.plots.run)
    threads: str = "auto"
    fast: bool = True  # FastLearner: the same run, its steps through the compiled fast path
    overwrite: bool = False  # replace a run already in --out (handgrad.app.outputs)
    data_dir: str | None = None  # cache folder of named datasets (load_dataset's data_dir)
    no_download: bool = False
    logger: str = "csv"  # per-epoch logs in the run folder (handgrad.train.callbacks.make_loggers)
    # "flush" subnormal floats to zero while training on the CPU, or "keep" them (IEEE). Part
    # of the recipe: the numbers differ slightly, so a resumed run keeps its saved policy.
    subnormals: str = "flush"
    schedule_from: int = 0  # the schedule spans epochs [schedule_from, schedule_until)
    schedule_until: int | None = None  # None: to the end of the run (epochs)

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
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_RECIPE}
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        return d


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"256,128"`` -> ``(256, 128)``."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise HandgradError(f"--hidden {text!r}: expected positive widths like 256,128")
    return sizes


def check_config(c: TrainConfig) -> None:
    """Raise :class:`HandgradError` naming the option of a resolved config that is out of range."""
    checks = [
        (c.epochs is not None and c.epochs >= 1, f"--epochs {c.epochs}: must be >= 1"),
        (c.bs is not None and c.bs >= 1, f"--bs {c.bs}: must be >= 1"),
        (
            c.lr is not None and 0 < c.lr < math.inf,
            f"--lr {c.lr}: must be a finite number > 0",
        ),
        (c.opt in OPTIMIZERS, f"--opt {c.opt!r}: choose one of {', '.join(OPTIMIZERS)}"),
        (c.shift is not None and 0 <= c.shift <= 8, f"--shift {c.shift}: must be in 0..8"),
        (c.erase is not None and 0 <= c.erase <= 1, f"--erase {c.erase}: must be in [0, 1]"),
        (
            c.weight_decay is not None and 0 <= c.weight_decay < math.inf,
            f"--weight-decay {c.weight_decay}: must be a finite number >= 0",
        ),
        (
            c.label_smoothing is not None and 0 <= c.label_smoothing < 1,
            f"--label-smoothing {c.label_smoothing}: must be in [0, 1)",
        ),
        (c.patience is None or c.patience >= 1, f"--patience {c.patience}: must be >= 1"),
        (c.dropout is None or 0 <= c.dropout < 1, f"--dropout {c.dropout}: must be in [0, 1)"),
        (c.stop_after is None or c.stop_after >= 1, "--stop-after must be >= 1"),
        (
            c.subnormals in POLICIES,
            f"--subnormals {c.subnormals!r}: choose one of {', '.join(POLICIES)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise HandgradError(message)


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


def config_for_resume(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, Checkpoint]:
    """The saved run's config, with the options in ``given`` that may change applied."""
    ckpt = load_checkpoint(str(config.resume))
    saved = ckpt.info.get("config")
    if not isinstance(saved, dict):
        raise HandgradError(f"{ckpt.path}: no training config in the sidecar; cannot resume")
    if "overwrite" in given:
        raise HandgradError(
            "--overwrite replaces a run and --resume continues one: give one of them"
        )
    fixed = sorted(given - set(RESUMABLE) - {"resume"})
    if fixed:
        opts = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise HandgradError(
            f"{opts}: cannot change when resuming (the run continues with its saved settings); "
            f"only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may be given"
        )
    saved = dict(saved)
    # runs saved before the policy existed trained with IEEE subnormals: bit-equal needs that
    saved.setdefault("subnormals", "keep")
    if saved.get("schedule_until") is None:  # the schedule spans the epochs it was made for
        saved["schedule_until"] = saved.get("epochs")
    merged = saved_config(saved, ckpt.path.with_suffix(".json"))
    for k in given & set(RESUMABLE):
        setattr(merged, k, getattr(config, k))
    if any(k in given and getattr(config, k) != saved.get(k) for k in ("lr", "schedule")):
        # a new schedule, from the resumed epoch to the end of the run
        merged.schedule_from, merged.schedule_until = int(ckpt.info.get("epoch", 0)), None
    if (
        "fast" not in given
    ):  # a --fast run resumes on the fast path: bit-equal needs the same kernels
        merged.fast = bool(ckpt.info.get("fast", False))
    merged.resume = config.resume
    if "out" not in given:
        merged.out = str(ckpt.path.parent)
    return merged, ckpt


def _has_type(value: Any, hint: Any) -> bool:
    """``value`` (from JSON) fits the field type ``hint`` (``int | None``, ``tuple[int, ...]``)."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list | tuple) and all(_has_type(v, int) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def saved_config(saved: dict[str, Any], sidecar: Any) -> TrainConfig:
    """The ``TrainConfig`` a checkpoint's sidecar recorded, checked as the command line's is:
    an edited or damaged sidecar is one line naming it, never a traceback mid-run."""
    hints = typing.get_type_hints(TrainConfig)
    values = {k: v for k, v in saved.items() if k in hints}
    wrong = [f"{k}={v!r}" for k, v in values.items() if not _has_type(v, hints[k])]
    try:
        if wrong:
            raise HandgradError(", ".join(wrong))
        if values.get("hidden") is not None:
            values["hidden"] = tuple(values["hidden"])
        config = TrainConfig(**values)
        check_config(config.resolved())
        if config.hidden is not None and min(config.hidden, default=0) < 1:
            raise HandgradError(f"hidden={list(config.hidden)}: widths must be positive")
        model_kwargs(config)
    except HandgradError as exc:
        raise HandgradError(
            f"{sidecar}: the saved training config is not valid ({exc}); the sidecar was edited "
            "or damaged, so the run cannot be resumed"
        ) from None
    return config
