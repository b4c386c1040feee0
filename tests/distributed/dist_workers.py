"""What the distributed tests run on every rank. A module of its own (not a test file) so that
spawned processes can import the functions; also a script, for ranks launched by hand the way
torchrun launches them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from handgrad.data import DataLoader
from handgrad.distributed import DataParallel, DistContext, run
from handgrad.nn.layers import Linear, ReLU
from handgrad.nn.layers.losses import MSELoss
from handgrad.nn.module import Module, Sequential
from handgrad.optim.optimizers import SGD

N_SAMPLES, N_FEATURES = 64, 10


class RunningMean(Module):
    """Identity that tracks a running mean of its input, like BatchNorm's running statistics:
    a floating buffer that differs per rank, and an integer counter."""

    def __init__(self, features: int) -> None:
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.running_mean.mul_(0.9).add_(0.1 * x.detach().mean(0))  # in place, no sync
        self.count.add_(1)
        return x

    def bwd(self, out, x):
        x.g = out.g


def make_model(seed: int) -> Sequential:
    g = torch.Generator().manual_seed(seed)
    return Sequential(
        Linear(N_FEATURES, 16, generator=g), RunningMean(16), ReLU(),
        Linear(16, 1, nonlinearity="linear", generator=g),
    )  # fmt: skip


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    return x, x[:, :3].sum(1) + 0.1 * torch.randn(N_SAMPLES, generator=g)


def atomic_save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def prepare_data(ctx: DistContext, data_dir: Path) -> None:
    """Stands for a download: rank 0 makes the file (slowly); the others must find it."""
    marker = data_dir / "downloaded"
    if ctx.is_main:
        time.sleep(0.3)
        data_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok")
    elif not marker.exists():
        raise RuntimeError(f"rank {ctx.rank} ran before rank 0 finished the download")


def train(
    ctx: DistContext,
    out_dir: str,
    data_dir: str,
    steps: int,
    global_batch: int,
    lr: float,
    bucket_mb: float,
) -> None:
    """SGD with momentum on MSE for ``steps`` steps of ``global_batch`` samples; rank 0
    saves the weights. The replicas start from *different* seeds on purpose: the broadcast in
    DataParallel must make them equal."""
    with ctx.main_first("download"):
        prepare_data(ctx, Path(data_dir))
    model = make_model(seed=100 + ctx.rank).to(ctx.device)
    loss_fn = MSELoss()
    dp = DataParallel(model, ctx, bucket_mb=bucket_mb)
    opt = SGD(model.parameters(), lr, momentum=0.9)
    x, y = make_data()
    dl = DataLoader(x, y, global_batch // ctx.world_size, shuffle=True, seed=3, rank=ctx.rank,
                    world_size=ctx.world_size, device=ctx.device)  # fmt: skip
    step, epoch = 0, 0
    while step < steps:
        dl.set_epoch(epoch)
        for xb, yb in dl:
            loss = loss_fn(model(xb), yb)
            model.backward(loss_fn.backward()[0], need_input_grad=False)
            dp.reduce_gradients()
            opt.step()
            opt.zero_grad()
            step += 1
            ctx.log(f"step {step} loss {loss.item():.5f}")  # .item(): a logging callback's sync
            if step == steps:
                break
        epoch += 1
    dp.sync_buffers()
    meta = {"rank": str(ctx.rank), "world_size": str(ctx.world_size)}
    meta["calls_per_step"] = str(dp.calls_per_step)
    meta["replicas_differ_by"] = str(replica_difference(ctx, model))
    ctx.on_main(atomic_save, Path(out_dir) / "weights.safetensors", model.state_dict(), meta)


def replica_difference(ctx: DistContext, model: Module) -> float:
    """The largest difference between any rank's parameters and rank 0's (0 when in step)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()  # (P,)
    if not ctx.distributed:
        return 0.0
    everyone = [torch.empty_like(flat) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(everyone, flat)
    return max(float((e - everyone[0]).abs().max()) for e in everyone)


def fail(ctx: DistContext, how: str) -> None:
    """Rank 1 fails at step 5 (``raise``, ``kill``: SIGKILL, ``stop``: SIGSTOP, a hang);
    rank 0 keeps reducing until it notices."""
    t = torch.ones(1000)
    for step in range(100_000):
        if ctx.rank == 1 and step == 5:
            if how == "raise":
                raise ValueError("boom at step 5")
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        ctx.all_reduce_(t.fill_(1.0))
        time.sleep(0.01)


def torchrun_style(
    rank: int, local_rank: int, world: int, port: int, stdio: tuple, fn, *args
) -> None:
    """A rank as torchrun starts it: the job described by environment variables only, then
    ``run(fn, 1, *args)`` joins it. ``stdio``: the test's stdout/stderr (a forkserver child
    would write to the server's)."""
    for target, fd in zip((1, 2), stdio, strict=True):
        os.dup2(fd, target)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    run(fn, 1, *args, device="cpu", timeout_s=30)


def waves(ctx: DistContext, log: str) -> None:
    """Record when each rank enters and leaves ``main_first`` (appends are atomic)."""
    with ctx.main_first("test"):
        with open(log, "a") as f:
            f.write(f"in {ctx.rank}\n")
        time.sleep(0.2)
        with open(log, "a") as f:
            f.write(f"out {ctx.rank}\n")
