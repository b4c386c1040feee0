"""DataLoader: whole-batch slices, seeded epochs, drop_last, shards, normalization, device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handgrad.data import DataLoader, hugepages, pixel_stats
from handgrad.data import loader as loader_module

N = 103  # not a multiple of the batch size, nor of the world sizes used below


def rows(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """x row i is (3i, 3i+1, 3i+2) and y[i] = i, so every batch says which rows it holds."""
    return torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.arange(n)


def epoch_labels(dl: DataLoader) -> torch.Tensor:
    batches = list(dl)
    for xb, yb in batches:
        assert torch.equal(xb[:, 0], 3 * yb.float())  # x and y stay paired
    return torch.cat([torch.zeros(0, dtype=torch.int64)] + [yb for _, yb in batches])


@pytest.mark.parametrize(("batch_size", "drop_last", "sizes"), [
    (10, False, [10] * 10 + [3]),
    (10, True, [10] * 10),
    (103, False, [103]),
    (200, False, [103]),
    (200, True, []),
])  # fmt: skip
def test_sequential_batches(batch_size, drop_last, sizes):
    x, y = rows()
    dl = DataLoader(x, y, batch_size, drop_last=drop_last)
    assert [len(yb) for _, yb in dl] == sizes
    assert len(dl) == len(sizes)
    assert torch.equal(epoch_labels(dl), y[: sum(sizes)])


def test_sequential_batches_are_views_not_copies():
    x, y = rows()
    xb, _ = next(iter(DataLoader(x, y, 16)))
    assert xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_shuffled_epoch_is_a_permutation_and_changes_each_epoch():
    x, y = rows()
    dl = DataLoader(x, y, 16, shuffle=True, seed=7)
    first, second = epoch_labels(dl), epoch_labels(dl)
    assert torch.equal(first.sort().values, y) and torch.equal(second.sort().values, y)
    assert not torch.equal(first, y) and not torch.equal(first, second)
    assert dl.epoch == 2


def test_order_is_a_function_of_seed_and_epoch():
    x, y = rows()
    runs = DataLoader(x, y, 16, shuffle=True, seed=7)
    orders = [epoch_labels(runs) for _ in range(3)]
    resumed = DataLoader(x, y, 16, shuffle=True, seed=7)
    resumed.set_epoch(2)
    assert torch.equal(epoch_labels(resumed), orders[2])
    other_seed = DataLoader(x, y, 16, shuffle=True, seed=8)
    assert not torch.equal(epoch_labels(other_seed), orders[0])
    # (seed 7, epoch 1) and (seed 8, epoch 0) must not collide as seed + epoch would.
    assert not torch.equal(orders[1], epoch_labels(DataLoader(x, y, 16, shuffle=True, seed=8)))


def test_shuffled_drop_last_leaves_out_a_different_tail_each_epoch():
    x, y = rows()
    dl = DataLoader(x, y, 10, shuffle=True, drop_last=True)
    a, b = epoch_labels(dl), epoch_labels(dl)
    assert len(a) == len(b) == 100 and len(dl) == 10
    assert set(a.tolist()) != set(b.tolist())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_get_disjoint_equal_shards_of_one_permutation(shuffle, world_size):
    x, y = rows()
    shards = []
    for rank in range(world_size):
        dl = DataLoader(x, y, 8, shuffle=shuffle, seed=3, rank=rank, world_size=world_size)
        dl.set_epoch(5)
        shards.append(epoch_labels(dl))
        assert len(dl) == -(-(N // world_size) // 8)
    assert {len(s) for s in shards} == {N // world_size}
    # Shuffled, rank r takes every world_size-th row of the epoch's permutation, so the ranks'
    # k-th batches together are one process's k-th batch of world_size * 8 rows.
    together = torch.stack(shards, 1).reshape(-1) if shuffle else torch.cat(shards)
    assert len(set(together.tolist())) == len(together)  # disjoint
    single = DataLoader(x, y, 8, shuffle=shuffle, seed=3)
    single.set_epoch(5)
    assert torch.equal(together, epoch_labels(single)[: len(together)])  # one permutation


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [3, 4])
def test_every_rank_has_the_same_batches_count_and_a_seeded_shard(shuffle, drop_last, world_size):
    """What data-parallel training relies on: ranks take batches of equal sizes in equal
    numbers (a rank with one more would wait in an all-reduce nobody joins), and a rank's
    shard depends only on (seed, epoch, rank), so each process computes its own alone."""

    def shard(rank: int, epoch: int) -> list[torch.Tensor]:
        dl = DataLoader(*rows(), 8, shuffle=shuffle, drop_last=drop_last, seed=3, rank=rank,
                        world_size=world_size)  # fmt: skip
        dl.set_epoch(epoch)
        batches = [yb for _, yb in dl]
        assert len(batches) == len(dl)
        return batches

    for epoch in (0, 1):
        shards = [shard(rank, epoch) for rank in range(world_size)]
        assert len({tuple(len(b) for b in s) for s in shards}) == 1  # equal sizes and counts
        for rank, batches in enumerate(shards):  # built again: the same rows in the same order
            assert torch.equal(torch.cat(shard(rank, epoch)), torch.cat(batches))


def test_normalization_is_applied_once_and_leaves_the_input_alone():
    x, y = rows(20)
    before = x.clone()
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0])
    xb, _ = next(iter(DataLoader(x, y, 20, mean=mean, std=std)))
    assert torch.allclose(xb, (before - mean) / std)
    assert torch.equal(x, before)
    xs, _ = next(iter(DataLoader(x, y, 20, mean=0.5)))
    assert torch.allclose(xs, before - 0.5)
    with pytest.raises(ValueError, match="std must be positive"):
        DataLoader(x, y, 4, std=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"needs floating-point x, got torch\.uint8"):
        DataLoader(x.to(torch.uint8), y, 4, mean=0.5)  # integer pixels would round the mean


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"y": torch.arange(5)}, "same number of rows"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size"),
    ({"world_size": 200}, "cannot be shared among 200 ranks"),
])  # fmt: skip
def test_bad_arguments(kwargs, error):
    x, y = rows()
    args = {"x": x, "y": y, "batch_size": 8} | kwargs
    with pytest.raises(ValueError, match=error):
        DataLoader(args.pop("x"), args.pop("y"), args.pop("batch_size"), **args)


def test_set_epoch_refuses_negative():
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        DataLoader(*rows(), 4).set_epoch(-1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_and_batch_gathers_give_the_same_batches(drop_last):
    x, y = rows()
    a = DataLoader(x, y, 16, shuffle=True, seed=1, gather="epoch", drop_last=drop_last)
    b = DataLoader(x, y, 16, shuffle=True, seed=1, gather="batch", drop_last=drop_last)
    assert (a.gather, b.gather) == ("epoch", "batch")
    for _ in range(3):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_buffers_are_reused_when_nothing_holds_them():
    """The loop variable still holds the last batch of epoch k while epoch k+1 is gathered, so
    two buffers take turns; no new memory is taken after the second epoch."""
    x, y = rows()
    dl = DataLoader(x, y, 16, shuffle=True, seed=1)
    where = []
    for _ in range(4):
        last = None
        for xb, _yb in dl:
            last = xb
        where.append(last.untyped_storage().data_ptr())
    assert where[0] == where[2] and where[1] == where[3] and where[0] != where[1]


def test_a_kept_batch_never_changes():
    """Batches (and views of them) kept from an epoch keep their values while later epochs
    are gathered: a held buffer is never written again."""
    x, y = rows()
    dl = DataLoader(x, y, 16, shuffle=True, seed=1)
    kept = [xb for xb, _ in dl]  # the whole of epoch 0
    for xb, _ in dl:  # a view of one batch of epoch 1, taken from a loop left early
        part = xb[:3, 1:]
        break
    expected = [k.clone() for k in kept], part.clone()
    for _ in range(3):
        for _xb, _yb in dl:
            pass
    assert all(torch.equal(a, b) for a, b in zip(kept, expected[0], strict=True))
    assert torch.equal(part, expected[1])


def test_bad_gather_mode():
    with pytest.raises(ValueError, match="gather must be 'auto', 'epoch' or 'batch'"):
        DataLoader(*rows(), 4, gather="rows")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False])
def test_cuda_batches(monkeypatch, resident):
    from handgrad.data import loader

    if not resident:
        monkeypatch.setattr(loader, "RESIDENT_FRACTION", 0.0)  # force host memory
    x, y = rows()
    dl = DataLoader(x, y, 16, shuffle=True, device="cuda", mean=1.0, std=2.0)
    assert dl.resident is resident
    assert dl.x.is_cuda is resident
    labels = []
    for xb, yb in dl:
        assert xb.is_cuda and yb.is_cuda
        assert torch.allclose(xb[:, 0], (3 * yb.float() - 1.0) / 2.0)
        labels.append(yb.cpu())
    assert torch.equal(torch.cat(labels).sort().values, y)


def test_cpu_device_keeps_the_split_in_place():
    x, y = rows()
    dl = DataLoader(x, y, 8, device="cpu")
    assert dl.resident and dl.x is x
    assert "batches=13" in repr(dl)


@pytest.mark.parametrize("rows", [1, 5, 20_000])
def test_pixel_stats_match_float64_torch(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.rand(rows, 7, generator=g) * 0.01 + 0.5  # a large mean, a tiny spread
    mean, std = pixel_stats(x, chunk_rows=64)
    ref_std, ref_mean = torch.std_mean(x.double())
    assert mean == pytest.approx(float(ref_mean), rel=1e-12)
    assert std == pytest.approx(float(ref_std), rel=1e-6)


# ----------------------------------------------------------------------------- huge pages
def big_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Just over HUGEPAGE_MIN bytes of float32 rows (the size at which the loader copies)."""
    n = loader_module.HUGEPAGE_MIN // (64 * 4) + 5
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("normalize", [False, True])
def test_huge_page_copy_gives_the_same_batches(normalize):
    x, y = big_rows()
    before = x.clone()
    stats = {"mean": 0.5, "std": 0.25} if normalize else {}
    paged = DataLoader(x, y, 256, shuffle=True, seed=3, **stats)
    plain = DataLoader(x, y, 256, shuffle=True, seed=3, hugepages=False, **stats)
    assert (paged.x is not x) and (normalize or plain.x is x)
    for (xa, ya), (xb, yb) in zip(paged, plain, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # bitwise: same values, same order
    assert torch.equal(x, before)


@pytest.mark.skipif(not hugepages.available(), reason="no transparent huge pages here")
def test_huge_page_memory_is_aligned_and_marked_for_huge_pages():
    t = hugepages.empty((3 * hugepages.HUGE_PAGE // 4,), torch.float32)  # 3 huge pages
    assert t is not None and t.data_ptr() % hugepages.HUGE_PAGE == 0
    t.fill_(1.0)
    # The mapping that holds the tensor carries the MADV_HUGEPAGE flag ("hg" in VmFlags);
    # whether the kernel finds free huge pages for it at this moment is up to the kernel.
    entry = mapping_of(t.data_ptr())
    assert "hg" in entry["VmFlags"].split()


def mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps entry (field -> value) of the mapping that contains ``address``."""
    entry: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # "start-end perms ..." opens a new mapping
            start, end = (int(v, 16) for v in head.split("-"))
            if inside:
                break
            inside = start <= address < end
        elif inside:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return entry


def test_small_or_sequential_splits_are_not_copied():
    x, y = big_rows()
    assert DataLoader(x, y, 64).x is x  # sequential: views of x itself
    small_x, small_y = rows()
    assert DataLoader(small_x, small_y, 8, shuffle=True).x is small_x


def test_large_split_is_not_copied_only_for_huge_pages(monkeypatch):
    """Past EPOCH_GATHER_MAX a second copy of x costs more memory than its TLB misses cost
    time: x is kept as given (normalizing still copies, and that copy may use huge pages)."""
    x, y = big_rows()
    monkeypatch.setattr(loader_module, "EPOCH_GATHER_MAX", x.nbytes - 1)
    dl = DataLoader(x, y, 256, shuffle=True)
    assert dl.x is x and dl.gather == "batch"
    assert DataLoader(x, y, 256, shuffle=True, mean=0.5).x is not x


@pytest.mark.parametrize("huge", [True, False])
def test_epoch_buffers_follow_the_hugepages_flag(huge, monkeypatch):
    """Asked of the loader's allocator rather than of /proc: ordinary heap memory can carry
    the huge-page flag too (numpy marks its large allocations, and malloc reuses them)."""
    asked = []

    def empty(shape, dtype):
        asked.append(shape)
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(loader_module.hugepage_memory, "empty", empty)
    x, y = big_rows()
    dl = DataLoader(x, y, 256, shuffle=True, hugepages=huge)
    next(iter(dl))
    # huge: the copy of x, then the epoch buffer; otherwise neither
    assert asked == ([tuple(x.shape)] * 2 if huge else [])
