"""The workloads, on synthetic MNIST-shaped data with the same seeds, initial weights, batch
order and precision (float32) on both sides:

- **W1** the lesson's full-batch forward + backward, 784-50-1, MSE, with and without the
  input's gradient; a last row times its matrix multiplications alone (the floor).
- **W2** one training epoch, 784-50-10, cross-entropy, SGD, batch 64: the readable loop, the
  compiled fast path, and the ``Learner`` with its progress and metrics callbacks.
- **W3** one training epoch, 784-256-128-10, cross-entropy, Adam, batch 256.
- **W4** one training epoch of the ``cnn`` recipe.
- **W5** inference throughput (rows/s) of the W3 model at batch 1 and batch 1,024.

Each workload is a list of variants (table rows), PyTorch's first: the reference; the peers
asked for (:mod:`handgrad.app.bench.peers`) follow handgrad's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from handgrad.app.bench.config import Config
from handgrad.app.bench.data import Batches, make_data
from handgrad.app.bench.jobs import GemmFloor, HandgradGrad, Infer, Job, TorchGrad, handgrad_infer
from handgrad.app.bench.models import handgrad_mlp, mlp_init, torch_mlp
from handgrad.app.bench.peers import PeerSpec, peer_status, peer_variants
from handgrad.app.bench.training import HandgradTrain, TorchTrain
from handgrad.fast import fast_path_status
from handgrad.interop.torch import to_torch
from handgrad.nn.models import build_model
from handgrad.nn.module import Module


@dataclass
class Variant:
    """One row of the table. ``role``: ``torch`` (the reference), ``handgrad``, ``peer``
    (another library, :mod:`handgrad.app.bench.peers`) or ``floor`` (a lower bound, not a
    competitor). ``baseline``: the label of the handgrad variant this one
    is compared with for an overhead target (the ``Learner`` against the bare loop)."""

    label: str
    make: Callable[[], Job]
    role: str = "handgrad"
    baseline: str | None = None


@dataclass
class Workload:
    key: str
    title: str
    rows: int
    repeats: int
    variants: list[Variant]
    batch: int = 0  # rows per step (what one probe processes); 0: all rows at once
    unit: str = "s"  # "s": time per run; "rows/s": throughput
    warmup: bool = True  # one untimed run per variant first


#: W2 and W3: (key, layer widths, optimizer, learning rate, batch size).
TRAINING = (
    ("W2", [784, 50, 10], "sgd", 0.1, 64),
    ("W3", [784, 256, 128, 10], "adam", 1e-3, 256),
)

#: handgrad's training paths (see :class:`HandgradTrain`) and the labels of their rows.
TRAINING_LABELS = {
    "loop": "handgrad",
    "fast": "handgrad fast",
    "fast fused": "handgrad fast, SGD fused",
    "learner": "Learner",
    "fast learner": "FastLearner",
}

#: W4: the cnn recipe's optimizer settings (AdamW, label smoothing 0.1; constant lr here).
W4_BATCH, W4_LR, W4_SMOOTHING = 128, 3e-3, 0.1

#: W5: (batch, rows by default, rows with --quick).
W5_BATCHES = ((1, 2_000, 500), (1024, 50_176, 10_240))


def fast_available(cfg: Config) -> tuple[bool, str]:
    """Whether the compiled fast path can be used here (building it on first use)."""
    if not cfg.fast:
        return False, "fast path disabled (--no-fast)"
    if cfg.torch_device.type != "cpu":
        # not even probed: building the extension takes minutes and it could not run anyway
        return False, (
            f"not on {cfg.device}: handgrad.fast is a C++ extension for CPU tensors, so its "
            "variants (handgrad fast, SGD fused, FastLearner) are skipped"
        )

    return fast_path_status()


def build_workloads(cfg: Config) -> tuple[list[Workload], list[str]]:
    """The workloads selected by ``cfg`` and the reasons any parts were skipped."""
    skipped: list[str] = []
    fast_ok, fast_why = fast_available(cfg)
    if not fast_ok:
        skipped.append(f"fast path: {fast_why}")
    peers = usable_peers(cfg, skipped)
    workloads: list[Workload] = []

    def want(key: str) -> bool:
        return not cfg.only or key in cfg.only

    if want("W1"):
        workloads += [_w1(cfg, input_grad, fast_ok, peers) for input_grad in (True, False)]
    for key, sizes, opt, lr, batch in TRAINING:
        if want(key):
            workloads.append(_train(cfg, key, sizes, opt, lr, batch, fast_ok, peers))
    if want("W4"):
        workloads.append(_w4(cfg, peers))
    if want("W5"):
        workloads += [_w5(cfg, b, full, quick, fast_ok) for b, full, quick in W5_BATCHES]
    return workloads, skipped


def usable_peers(cfg: Config, skipped: list[str]) -> tuple[str, ...]:
    """The peers asked for that can run here; one line in ``skipped`` for each that cannot."""
    if cfg.peers and cfg.torch_device.type != "cpu":
        skipped.append(f"peers ({', '.join(cfg.peers)}): measured on the CPU only")
        return ()
    usable = []
    for name in cfg.peers:
        ok, why = peer_status(name)
        if ok:
            usable.append(name)
        else:
            skipped.append(f"peer {name}: {why}")
    return tuple(usable)


def with_peers(variants: list[Variant], peers: tuple[str, ...], spec: PeerSpec) -> list[Variant]:
    """``variants`` with each peer's rows inserted before the floor (the last row, if any)."""
    rows = [
        Variant(label, make, role="peer")
        for name in peers
        for label, make in peer_variants(name, spec)
    ]
    floor = [v for v in variants if v.role == "floor"]
    return [v for v in variants if v.role != "floor"] + rows + floor


def _w1(cfg: Config, input_grad: bool, fast_ok: bool, peers: tuple[str, ...] = ()) -> Workload:
    rows = cfg.n(50_000, 10_000)
    x, y = make_data(rows, cfg.seed, regression=True, device=cfg.device)
    init = mlp_init([784, 50, 1], cfg.seed, cfg.device)
    names = [n for n, _ in handgrad_mlp(init).named_parameters()]
    variants = [
        Variant("torch eager", lambda: TorchGrad(init, x, y, names, input_grad), role="torch"),
        Variant("handgrad", lambda: HandgradGrad(init, x, y, input_grad)),
    ]
    if fast_ok:
        variants.append(
            Variant("handgrad fast", lambda: HandgradGrad(init, x, y, input_grad, True))
        )
    whole = Batches(x, y, rows)
    variants.append(
        Variant("GEMMs alone", lambda: GemmFloor(init, whole, input_grad), role="floor")
    )
    spec = PeerSpec("W1", "grad", whole, names, lambda: torch_mlp(init), init=init,
                    input_grad=input_grad)  # fmt: skip
    variants = with_peers(variants, peers, spec)
    tag = "with input grad" if input_grad else "no input grad"
    title = f"full batch fwd+bwd 784-50-1 MSE, {rows:,} rows, {tag}"
    return Workload("W1", title, rows, cfg.rounds(7), variants, batch=rows)


def _train(
    cfg: Config,
    key: str,
    sizes: list[int],
    opt: str,
    lr: float,
    batch: int,
    fast_ok: bool,
    peers: tuple[str, ...] = (),
) -> Workload:
    rows = cfg.n(50_000, 10_000)
    x, y = make_data(rows, cfg.seed, device=cfg.device)
    b = Batches(x, y, batch)
    init = mlp_init(sizes, cfg.seed, cfg.device)
    names = [n for n, _ in handgrad_mlp(init).named_parameters()]

    def hg(path: str, baseline: str | None = None) -> Variant:
        return Variant(
            TRAINING_LABELS[path],
            lambda: HandgradTrain(lambda: handgrad_mlp(init), b, opt, lr, path),
            baseline=baseline,
        )

    variants = [
        Variant(
            "torch eager",
            lambda: TorchTrain(lambda: torch_mlp(init), b, names, opt, lr),
            role="torch",
        ),
        hg("loop"),
    ]
    if fast_ok:
        variants.append(hg("fast"))
    if fast_ok and opt == "sgd":
        variants.append(hg("fast fused"))
    if key == "W2":
        variants.append(hg("learner", baseline="handgrad"))
        if fast_ok:
            # with plain SGD it folds the update in, as the fused loop does
            fast_base = "handgrad fast, SGD fused" if opt == "sgd" else "handgrad fast"
            variants.append(hg("fast learner", baseline=fast_base))
    variants.append(Variant("GEMMs alone", lambda: GemmFloor(init, b), role="floor"))
    spec = PeerSpec(key, "mlp", b, names, lambda: torch_mlp(init), init=init, opt=opt, lr=lr)
    variants = with_peers(variants, peers, spec)
    name = "SGD" if opt == "sgd" else "Adam"
    title = f"epoch {'-'.join(map(str, sizes))} CE {name}, batch {batch}, {rows:,} rows"
    return Workload(key, title, rows, cfg.rounds(5), variants, batch=batch)


def _w4(cfg: Config, peers: tuple[str, ...] = ()) -> Workload:
    rows = cfg.n(10_000, 1_024)
    x, y = make_data(rows, cfg.seed, device=cfg.device)
    b = Batches(x, y, W4_BATCH)
    ref = build_model("cnn", generator=torch.Generator().manual_seed(cfg.seed + 1))
    ref.to(cfg.device)  # built on the CPU (its generator is a CPU one), then moved
    names = [n for n, _ in ref.named_parameters()]
    s = W4_SMOOTHING

    def hg() -> Module:
        return ref.copy()

    variants = [
        Variant(
            "torch eager",
            lambda: TorchTrain(lambda: to_torch(ref), b, names, "adamw", W4_LR, s),
            role="torch",
        ),
        Variant("handgrad", lambda: HandgradTrain(hg, b, "adamw", W4_LR, "loop", s)),
    ]
    spec = PeerSpec("W4", "cnn", b, names, lambda: to_torch(ref), model=ref, opt="adamw",
                    lr=W4_LR, smoothing=s)  # fmt: skip
    variants = with_peers(variants, peers, spec)
    title = f"epoch cnn (5 conv+BN+ReLU) CE AdamW, batch {W4_BATCH}, {rows:,} rows"
    # An epoch is long: one round by default. Warmed up like the others all the same: the
    # first epoch of each side pays one-time costs (oneDNN builds its convolution kernels on
    # first use; the heap grows to the working set).
    return Workload("W4", title, rows, cfg.rounds(1), variants, batch=W4_BATCH)


def _w5(cfg: Config, batch: int, full: int, quick: int, fast_ok: bool) -> Workload:
    rows = cfg.n(full, quick)
    x, _ = make_data(rows, cfg.seed, device=cfg.device)
    init = mlp_init([784, 256, 128, 10], cfg.seed, cfg.device)
    variants = [
        Variant("torch eager", lambda: Infer(torch_mlp(init).eval(), x, batch), role="torch"),
        Variant("handgrad", lambda: handgrad_infer(init, x, batch)),
    ]
    if fast_ok:
        variants.append(Variant("handgrad fast", lambda: handgrad_infer(init, x, batch, fast=True)))
    title = f"inference 784-256-128-10, batch {batch:,}, {rows:,} rows"
    return Workload("W5", title, rows, cfg.rounds(7), variants, batch=batch, unit="rows/s")
