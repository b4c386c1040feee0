"""Keep one model replica per rank in step: :class:`DataParallel` and its Learner callbacks.

Each rank computes the hand-written gradients of its shard of the global batch (a
``handgrad.data.DataLoader`` with ``rank=``, ``world_size=``); :class:`DataParallel` averages
them across ranks before the optimizer step, so every replica takes the step one process
would take on the whole global batch::

    def train(ctx: DistContext) -> None:          # runs on every rank, see launch.run
        model = build_model("mlp").to(ctx.device)
        dp = DataParallel(model, ctx)             # rank 0's initial weights on every rank
        dl = DataLoader(x, y, 256 // ctx.world_size, shuffle=True, seed=0,
                        rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
        for epoch in range(3):
            for xb, yb in dl:
                loss = loss_fn(model(xb), yb)
                model.backward(loss_fn.backward()[0], need_input_grad=False)
                dp.reduce_gradients()             # p.g = mean over ranks
                opt.step(); opt.zero_grad()
            dp.sync_buffers()                     # BatchNorm running statistics
        ctx.on_main(save_checkpoint, model)       # rank 0 writes; the others wait

What is synchronised, when and why (BatchNorm, rank 0's duties, failures): docs/distributed.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from handgrad.distributed.context import DistContext
from handgrad.errors import HandgradError
from handgrad.nn.module import Module, Parameter

__all__ = ["AverageTrainMetrics", "DataParallel", "DataParallelCallback"]


def _buckets(tensors: Sequence[Tensor], cap_bytes: int) -> list[list[int]]:
    """Group tensor indices into buckets of one device and dtype and at most ``cap_bytes``
    (a tensor larger than the cap gets a bucket of its own). Reverse order: the last layer's
    gradients are ready first in backward, so a future overlap of communication with backward
    would send buckets in this order."""
    buckets: list[list[int]] = []
    open_: dict[tuple[torch.device, torch.dtype], tuple[list[int], int]] = {}
    for i in reversed(range(len(tensors))):
        t = tensors[i]
        key, size = (t.device, t.dtype), t.numel() * t.element_size()
        current, used = open_.get(key, ([], 0))
        if current and used + size > cap_bytes:
            buckets.append(current)
            current, used = [], 0
        current.append(i)
        open_[key] = (current, used + size)
    buckets.extend(b for b, _ in open_.values() if b)
    return buckets


class DataParallel:
    """Keeps one model replica per rank in step: equal initial weights, averaged gradients,
    synchronised buffers (the semantics: docs/distributed.md).

    Args:
        model: this rank's replica (already on ``ctx.device``).
        ctx: this rank's :class:`DistContext`.
        bucket_mb: gradients are flattened into buckets of at most this many megabytes, one
            ``all_reduce`` each (fewer, larger messages: per-call latency dominates small ones).
        broadcast: copy rank 0's parameters and buffers to every rank now.
        params: the parameters to average (default: all of ``model``'s).

    Attributes:
        calls_per_step: ``all_reduce`` calls made by each :meth:`reduce_gradients`.
        comm_seconds: wall time spent in :meth:`reduce_gradients` (including waiting for the
            slowest rank), for benchmarks.
    """

    def __init__(
        self,
        model: Module,
        ctx: DistContext,
        *,
        bucket_mb: float = 25.0,
        broadcast: bool = True,
        params: Sequence[Parameter] | None = None,
    ) -> None:
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        self.model, self.ctx = model, ctx
        self.params = list(params) if params is not None else model.parameters()
        self.buckets = _buckets(self.params, int(bucket_mb * 2**20))
        self.calls_per_step = len(self.buckets)
        self.comm_seconds = 0.0
        if broadcast:
            self.broadcast_state()

    def _state_tensors(self) -> list[Tensor]:
        params = [p.data for p in self.model.parameters()]
        return params + [b for _, b in self.model.named_buffers()]

    def broadcast_state(self) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's (flattened per bucket)."""
        tensors = self._state_tensors()
        for bucket in _buckets(tensors, 64 * 2**20):
            group = [tensors[i] for i in bucket]
            flat = torch.cat([t.reshape(-1) for t in group])  # (sum of numels,)
            self.ctx.broadcast_(flat, 0, "broadcasting rank 0's weights")
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))

    def reduce_gradients(self) -> None:
        """``p.g = mean over ranks of p.g`` for every parameter, in place of the local one.

        Every bucket's ``all_reduce`` is started before the first is waited for, so the
        messages overlap each other; the new ``p.g`` are views into the reduced flat buffers
        (no copy back).
        """
        if not self.ctx.distributed:
            return
        start = time.perf_counter()
        pending = []
        for bucket in self.buckets:
            group = [self.params[i] for i in bucket]
            flat = torch.cat(  # (sum of numels,)
                [(p.g if p.g is not None else torch.zeros_like(p)).reshape(-1) for p in group]
            )
            work = self.ctx._collective(
                "all_reduce of gradients", lambda f=flat: dist.all_reduce(f, async_op=True)
            )
            pending.append((group, flat, work))
        world = float(self.ctx.world_size)
        for group, flat, work in pending:
            self.ctx._collective("all_reduce of gradients", work.wait)
            flat.div_(world)
            for p, part in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.g = part.view_as(p)
        self.comm_seconds += time.perf_counter() - start

    def sync_buffers(self) -> None:
        """Average floating-point buffers (BatchNorm running mean/variance) over ranks; copy
        the others (counters) from rank 0. Call before validating and before saving."""
        if not self.ctx.distributed:
            return
        for _, b in self.model.named_buffers():
            if b.is_floating_point():
                self.ctx.all_reduce_(b, "averaging buffers").div_(self.ctx.world_size)
            else:
                self.ctx.broadcast_(b, 0, "copying rank 0's buffers")


class DataParallelCallback:
    """:class:`handgrad.train.learner.Learner` callback that makes ``learn.fit`` data-parallel.

    - ``before_fit``: wraps ``learn.model`` in :class:`DataParallel` (rank 0's weights to all);
    - ``after_backward``: averages the gradients (it runs first among callbacks, ``order``
      -100, so gradient clipping or logging sees the averaged gradient);
    - ``after_epoch`` of the training pass: :meth:`DataParallel.sync_buffers`, so validation
      and checkpoints see the same BatchNorm statistics on every rank.

    Give every rank the *whole* validation set (unsharded): all ranks then compute identical
    metrics from identical weights, so decisions taken from metrics (early stopping, best
    checkpoint) are the same everywhere; a decision taken on one rank only would leave the
    others waiting in an all-reduce until the timeout. Attach progress bars and file-writing
    callbacks on rank 0 only (``ctx.is_main``).
    """

    order = -100
    name = "data_parallel"

    def __init__(self, ctx: DistContext, *, bucket_mb: float = 25.0) -> None:
        self.ctx, self.bucket_mb = ctx, bucket_mb
        self.dp: DataParallel | None = None

    def before_fit(self, learn: Any) -> None:
        shards = getattr(learn.train_dl, "world_size", None)
        if shards is not None and shards != self.ctx.world_size:
            raise HandgradError(
                f"rank {self.ctx.rank}: the training loader is split into {shards} shard(s) for "
                f"{self.ctx.world_size} ranks; create it with rank=ctx.rank, "
                "world_size=ctx.world_size"
            )
        self.dp = DataParallel(learn.model, self.ctx, bucket_mb=self.bucket_mb)

    def after_backward(self, learn: Any) -> None:
        if self.dp is not None:
            self.dp.reduce_gradients()

    def after_epoch(self, learn: Any) -> None:
        if self.dp is not None and learn.training:
            self.dp.sync_buffers()


class AverageTrainMetrics:
    """Learner callback: after each training pass, replace every ``train_*`` value of
    ``learn.metrics.values`` by its mean over the ranks, so that rank 0 reports the loss of the
    whole epoch, not of its shard. (Shards have equal sizes, so the mean of the ranks' means
    is the mean over all samples.) Runs after ``Metrics`` (order 10) computed the values and
    before ``Recorder`` (20), ``EarlyStopping`` (25) and ``Progress`` (50) read them.
    """

    order = 15
    name = None

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def after_epoch(self, learn: Any) -> None:
        metrics = getattr(learn, "metrics", None)
        if not (learn.training and self.ctx.distributed and metrics is not None):
            return
        keys = sorted(k for k in metrics.values if k.startswith("train_"))
        if keys:
            values = torch.tensor([metrics.values[k] for k in keys], dtype=torch.float64)
            values = values.to(self.ctx.device)  # NCCL reduces device tensors only
            self.ctx.all_reduce_(values, "averaging the epoch's training metrics")
            means = (values / self.ctx.world_size).tolist()  # the pass's one sync
            metrics.values.update(zip(keys, means, strict=True))
