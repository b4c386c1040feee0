"""``DataLoader``: whole-batch slices of in-memory tensors, never a Python loop over items.

A batch is one slice (``x[i:j]``, a view) when the order is sequential. A shuffled epoch is
gathered in one pass into a buffer the loader reuses (the compiled row copy of
:mod:`handgrad.data.rowcopy`, else ``index_select``), and its batches are views of that (or,
with ``gather="batch"``, one ``index_select`` per batch). PyTorch's ``DataLoader`` over a
``TensorDataset`` instead indexes every item and stacks them again (one ``__getitem__`` call
per row and a ``torch.stack`` per batch). The measured costs: ``benchmarks/RESULTS.md``,
"DataLoader".

Sharding for data-parallel training lives here too (``rank=``, ``world_size=``): it is
handgrad's only sharded epoch order, the one ``handgrad.distributed`` uses.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from itertools import repeat

import torch
from torch import Tensor

from handgrad.data import hugepages as hugepage_memory
from handgrad.data import rowcopy

#: A split is moved to an accelerator whole when it takes less than this part of the free memory.
RESIDENT_FRACTION = 0.5
#: Shuffled splits at least this large are kept in huge pages: below it, 4 KiB pages that
#: the TLB covers (a few MiB) hold the whole split anyway.
HUGEPAGE_MIN = 8 * 1024 * 1024
#: Shuffled CPU splits up to this size are gathered one epoch at a time (``gather="auto"``),
#: which holds up to two more copies of the split; larger ones one batch at a time.
EPOCH_GATHER_MAX = 512 * 1024**2


class DataLoader:
    """Iterate over ``(xb, yb)`` batches of the rows of ``x`` and ``y``.

    The order of an epoch is a function of ``(seed, epoch)`` only: iterating uses the current
    epoch and then advances it by one, and ``set_epoch(e)`` selects epoch ``e`` for the next
    iteration (resuming a run, or keeping distributed ranks in step).

    Sharding (``world_size`` W > 1): every rank computes the same epoch order and keeps the
    first ``(N // W) * W`` rows of it (the last ``N % W`` sit that epoch out), so the shards
    are disjoint and every rank has ``N // W`` rows and the same number of batches: a rank
    with an extra batch would wait in a collective that no other rank joins. Shuffled, rank
    ``r`` takes positions ``r, r + W, r + 2W, ...`` of the permutation, so the ranks' ``k``-th
    batches together are one process's ``k``-th batch of ``W * batch_size`` rows (when W
    divides N, W processes take the same steps as one). In sequential order rank ``r`` takes
    the ``r``-th contiguous block instead, so that its batches stay views of ``x``.

    Args:
        x: inputs (N, ...), e.g. float32 (N, 784) pixels.
        y: targets (N,), e.g. int64 labels.
        batch_size: rows per batch.
        shuffle: a new random order each epoch (``torch.randperm`` with a seeded generator).
        seed: the shuffling seed.
        drop_last: skip the last batch when it is smaller than ``batch_size``.
        device: where batches are delivered. The whole split is moved there once when it takes
            less than half of the device's free memory; otherwise it stays in host memory and
            each batch is copied over as it is delivered.
        mean, std: normalize ``x`` to ``(x - mean) / std`` (scalars or tensors broadcasting
            against one row). Applied once to the whole split when the loader is built, so no
            batch pays for it; this keeps a normalized copy of ``x``.
        rank, world_size: this process's shard for data-parallel training (see above);
            ``batch_size`` is then per rank.
        gather: how a shuffled epoch's rows are collected on the CPU. ``"epoch"``: in one
            pass at the start of the epoch, into a buffer the loader keeps and reuses; batches
            are views of it. One long copy costs less than many short ones interleaved with
            training steps, for up to two more copies of ``x``'s memory. A buffer is only
            written again when nothing holds a batch (or any view) of the epoch in it;
            otherwise the next epoch gets another one, so a batch never changes under
            whoever keeps it. ``"batch"``: one gather per batch into fresh memory.
            ``"auto"`` (default): ``"epoch"`` up to ``EPOCH_GATHER_MAX`` bytes of ``x``,
            else ``"batch"``.
        hugepages: when shuffling a CPU split of ``HUGEPAGE_MIN`` bytes or more, keep the
            loader's copy of ``x`` and its epoch buffers in 2 MiB pages (Linux with
            transparent huge pages; see :mod:`handgrad.data.hugepages`). Random rows then
            stop missing the TLB one by one, which makes an epoch's gathers faster. This
            costs one copy of ``x`` unless it is normalized (which copies it anyway), so
            without normalization it is only done up to ``EPOCH_GATHER_MAX`` bytes.
            ``False`` keeps ``x`` as given and the buffers in ordinary pages.
        compiled: gather an epoch with handgrad's compiled row copy
            (:mod:`handgrad.data.rowcopy`: x read in order, rows streamed to their places),
            built with the system's C compiler on first use; faster than ``index_select`` up
            to ``rowcopy.MAX_THREADS`` torch threads (with more, ``index_select`` is used: it
            scales better). The same rows bit for bit; where it cannot be built,
            ``index_select`` is used.

    Batches are views of (or gathered from) the loader's tensors: do not modify them in place.

    Example:
        >>> dl = DataLoader(ds.train.x, ds.train.y, 64, shuffle=True, seed=1)
        >>> for xb, yb in dl:   # xb (64, 784) float32, yb (64,) int64
        ...     ...
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        mean: float | Tensor | None = None,
        std: float | Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        gather: str = "auto",
        hugepages: bool = True,
        compiled: bool = True,
    ) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"DataLoader needs tensors, got {type(x).__name__}, {type(y).__name__}")
        if x.ndim == 0 or len(x) != len(y):
            raise ValueError(
                f"DataLoader needs x and y with the same number of rows, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if len(x) < world_size:
            raise ValueError(f"{len(x)} rows cannot be shared among {world_size} ranks")
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.rank, self.world_size = rank, world_size
        self.compiled = compiled
        self.device = torch.device(device) if device is not None else x.device
        self.resident = _fits(self.device, x, y)
        # Move first, normalize on the target device (faster there, and no second host copy).
        data_device = self.device if self.resident else x.device
        data_x, self.y = x.to(data_device), y.to(data_device)
        # Rows read in random order from a split the TLB cannot cover: its copies go into
        # huge pages (the loader's own copy of x, and the epoch buffers).
        self._huge = (
            hugepages and shuffle and data_x.device.type == "cpu" and data_x.nbytes >= HUGEPAGE_MIN
        )
        paged = None
        normalize = mean is not None or std is not None
        # A copy that normalizing makes anyway goes into huge pages whatever its size; one
        # made only for them, up to EPOCH_GATHER_MAX (a second copy of a large split costs
        # more memory than its TLB misses cost time).
        if self._huge and (normalize or data_x.nbytes <= EPOCH_GATHER_MAX):
            paged = hugepage_memory.empty(tuple(data_x.shape), data_x.dtype)  # None if unavailable
        if normalize:
            self.x = _normalize(data_x, mean, std, out=paged)
        else:
            self.x = data_x if paged is None else paged.copy_(data_x)
        self.shard_size = len(x) // world_size if world_size > 1 else len(x)
        self._epoch = 0
        if gather not in ("auto", "epoch", "batch"):
            raise ValueError(f"gather must be 'auto', 'epoch' or 'batch', got {gather!r}")
        if gather == "auto":
            gather = "epoch" if self.x.nbytes <= EPOCH_GATHER_MAX else "batch"
        # Per epoch on the CPU only: on an accelerator a per-batch gather is one kernel launch.
        self.gather = gather if self.x.device.type == "cpu" else "batch"
        # gather="epoch": (buffer, its storage's use count when only the loader holds it)
        self._buffers: list[tuple[Tensor, int]] = []

    # ------------------------------------------------------------------------------ order
    @property
    def epoch(self) -> int:
        """The epoch the next iteration will deliver."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration deliver epoch ``epoch``'s order (a function of seed, epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = epoch

    def order(self, epoch: int) -> Tensor | None:
        """This rank's row indices for ``epoch`` (int64 on the data's device), or ``None`` when
        they are a contiguous range (sequential order), which is sliced without any gather."""
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        perm = torch.randperm(len(self.x), generator=g)  # (N,) the same on every rank
        # Positions rank, rank + W, ...: the ranks' k-th batches make one global batch.
        kept = perm[: self.shard_size * self.world_size]  # (shard * W,)
        return kept[self.rank :: self.world_size].to(self.x.device)  # (shard,)

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    # -------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        x, y, idx = self.x, self.y, self.order(epoch)
        bs = self.batch_size
        rows = len(self) * bs if self.drop_last else self.shard_size
        if rows == 0:  # split() of no rows would still give one empty batch
            return
        if idx is None:  # sequential: every batch is a view, no copy at all
            start = self.rank * self.shard_size  # where this rank's rows start
            xs = x[start : start + rows].split(bs)  # views (B, D)
            ys = y[start : start + rows].split(bs)  # views (B,)
        else:
            idx = idx[:rows]
            # Labels are small (8 bytes a row): one gather per epoch, then views per batch.
            ys = y.index_select(0, idx).split(bs)
            if self.gather == "epoch":
                xs = self._epoch_rows(x, idx).split(bs)  # views (B, D)
            else:
                # One gather per batch, into a fresh small buffer that malloc recycles (so it
                # is cache-warm when the model reads it). Splitting the indices once keeps
                # the per-batch Python work to the gather itself.
                xs = map(x.index_select, repeat(0), idx.split(bs))  # (B, D) each
        if self.resident:
            yield from zip(xs, ys, strict=True)
        else:
            for xb, yb in zip(xs, ys, strict=True):
                yield xb.to(self.device), yb.to(self.device)

    def _epoch_rows(self, x: Tensor, idx: Tensor) -> Tensor:
        """``x[idx]`` written into one of the loader's epoch buffers that nothing else holds.

        Two buffers cover the usual loop: its variable (or ``learn.xb``) still holds the last
        batch of one epoch while the next one is gathered. When both are held, the next
        epoch gets a new buffer and the loader lets go of its oldest.
        """
        free = next(
            (
                rows
                for rows, alone in self._buffers
                if len(rows) == len(idx) and alone >= 0 and _use_count(rows) == alone
            ),
            None,
        )
        if free is None:
            shape = (len(idx), *x.shape[1:])
            free = hugepage_memory.empty(shape, x.dtype) if self._huge else None
            if free is None:
                free = torch.empty(shape, dtype=x.dtype, device=x.device)
            self._buffers = [*self._buffers[-1:], (free, _use_count(free))]
        if not (self.compiled and rowcopy.gather_rows(x, idx, free)):
            torch.index_select(x, 0, idx, out=free)
        return free  # (rows, D): one pass over the epoch

    def __repr__(self) -> str:
        where = f"{self.device}" + ("" if self.resident else " (batches copied from host)")
        return (
            f"DataLoader({self.shard_size} rows, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
            f"rank={self.rank}/{self.world_size}, device={where}, batches={len(self)})"
        )


def _use_count(t: Tensor) -> int:
    """How many tensors (views included) share ``t``'s memory, or -1 where this torch cannot
    tell (then an epoch buffer is never reused: always correct, only slower)."""
    try:
        return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))
    except (AttributeError, RuntimeError, TypeError):
        return -1


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch): hashed, so that nearby pairs give unrelated orders and
    no two pairs share one (as ``seed + epoch`` would)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _normalize(
    x: Tensor,
    mean: float | Tensor | None,
    std: float | Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """``(x - mean) / std`` in a new tensor (``out`` when given): the caller's x is untouched."""
    if not x.is_floating_point():
        raise ValueError(
            f"normalizing needs floating-point x, got {x.dtype}: pass x.float() / 255 for pixels"
        )
    mean_t = torch.as_tensor(0.0 if mean is None else mean, dtype=x.dtype, device=x.device)
    std_t = torch.as_tensor(1.0 if std is None else std, dtype=x.dtype, device=x.device)
    if bool((std_t <= 0).any()):
        raise ValueError("std must be positive (a constant pixel has std 0: add a small epsilon)")
    if out is None or torch.broadcast_shapes(x.shape, mean_t.shape, std_t.shape) != x.shape:
        return (x - mean_t) / std_t  # (N, D)
    return torch.sub(x, mean_t, out=out).div_(std_t)  # (N, D), the same values


def _fits(device: torch.device, x: Tensor, y: Tensor) -> bool:
    """Whether the split can live on ``device`` whole (always true for the CPU)."""
    if device.type != "cuda" or (x.device == device and y.device == device):
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return x.nbytes + y.nbytes < RESIDENT_FRACTION * free
