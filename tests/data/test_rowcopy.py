"""The DataLoader's compiled row copy: the same rows as ``index_select``, bit for bit, or a
clean ``False`` (and ``index_select``) where it cannot run."""

from __future__ import annotations

import os

import pytest
import torch

import handgrad._build
from handgrad._build import Build
from handgrad.data import DataLoader, rowcopy

needs_build = pytest.mark.skipif(
    not rowcopy.status()[0], reason=f"no compiled row copy here: {rowcopy.status()[1]}"
)


def rows(n: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    if dtype.is_floating_point:
        return torch.randn(n, *shape, generator=g, dtype=dtype)
    return torch.randint(0, 100, (n, *shape), generator=g, dtype=dtype)


def gathered(
    x: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None, threads: int = 1
) -> torch.Tensor:
    out = torch.full((len(idx), *x.shape[1:]), 7, dtype=x.dtype) if out is None else out
    assert rowcopy.copy_rows(x, idx, out, threads)
    return out


@needs_build
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((784,), torch.float32),  # MNIST rows: 3,136 bytes, streamed 16 bytes at a time
        ((3,), torch.float32),  # 12-byte rows: not a multiple of 16, copied with memcpy
        ((1, 5, 5), torch.float64),
        ((17,), torch.uint8),
        ((2,), torch.int64),
        ((), torch.float32),  # one value a row
    ],
)
def test_same_rows_as_index_select(shape, dtype) -> None:
    x = rows(300, shape, dtype)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(300, generator=g)
    assert torch.equal(gathered(x, perm), torch.index_select(x, 0, perm))
    shard = perm[1::3][:77]  # one rank's rows: a subset, in random order
    assert torch.equal(gathered(x, shard), torch.index_select(x, 0, shard))
    assert torch.equal(gathered(x, perm[:0]), x[:0])


@needs_build
def test_unaligned_destination_falls_back_to_memcpy_inside() -> None:
    x = rows(64, (8,), torch.float32)  # 32-byte rows
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    flat = torch.zeros(64 * 8 + 1)
    out = flat[1:].view(64, 8)  # 4 bytes past an aligned address
    assert out.data_ptr() % 16 != 0
    assert torch.equal(gathered(x, idx, out), x[idx])


@needs_build
@pytest.mark.parametrize("threads", [2, 3, 7])
def test_split_across_threads(threads) -> None:
    x = rows(1000, (16,), torch.float32)
    idx = torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:900]
    assert torch.equal(gathered(x, idx, threads=threads), x[idx])


@pytest.fixture
def torch_threads():
    """Set torch's thread count for one test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_threads_follow_torch_up_to_the_limit(monkeypatch, torch_threads) -> None:
    """As many threads as torch uses, one per PARALLEL_MIN_BYTES of x at most; past
    MAX_THREADS torch threads, index_select (False, out untouched)."""
    asked = []
    monkeypatch.setattr(rowcopy, "copy_rows", lambda x, idx, out, threads: asked.append(threads))
    monkeypatch.setattr(rowcopy, "PARALLEL_MIN_BYTES", 1024)
    monkeypatch.setattr(rowcopy, "MAX_THREADS", 3)
    idx, out = torch.arange(10), torch.zeros(10, 64)
    torch_threads(2)
    rowcopy.gather_rows(torch.zeros(10, 64), idx, out)  # 2,560 bytes: 2 threads of 1 KiB
    torch_threads(3)
    rowcopy.gather_rows(torch.zeros(10, 64), idx, out)  # still 2
    rowcopy.gather_rows(torch.zeros(100, 64), torch.arange(100), torch.zeros(100, 64))  # 3
    assert asked == [2, 2, 3]
    torch_threads(4)
    assert rowcopy.gather_rows(torch.zeros(100, 64), idx, out) is False and asked == [2, 2, 3]


@pytest.mark.parametrize(
    "case",
    ["repeated row", "non-contiguous x", "other dtype", "wrong out shape"],
)
def test_declines_what_it_cannot_copy(case) -> None:
    """``False`` and ``out`` untouched: the caller then uses index_select."""
    x = rows(10, (4,), torch.float32)
    idx = torch.tensor([3, 1, 4, 0])
    out = torch.zeros(4, 4)
    if case == "repeated row":
        idx = torch.tensor([3, 1, 3, 0])
    elif case == "non-contiguous x":
        x = rows(10, (8,), torch.float32)[:, ::2]
    elif case == "other dtype":
        out = torch.zeros(4, 4, dtype=torch.float64)
    else:
        out = torch.zeros(5, 4)
    before = out.clone()
    assert not rowcopy.gather_rows(x, idx, out)
    assert torch.equal(out, before)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The row copy as on a machine where it was never built, building into ``tmp_path``."""
    monkeypatch.setattr(rowcopy, "build", Build(rowcopy._SOURCE, rowcopy._load))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def test_no_compiler_means_index_select(fresh, monkeypatch) -> None:
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    ok, why = rowcopy.status()
    assert not ok and "building rowcopy.c failed" in why
    assert os.listdir(fresh) == []  # nothing half-written left behind
    x, y = rows(200, (6,), torch.float32), torch.arange(200)
    plain = DataLoader(x, y, 32, shuffle=True, seed=4, compiled=False)
    fallback = DataLoader(x, y, 32, shuffle=True, seed=4)
    for (xa, ya), (xb, yb) in zip(plain, fallback, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_disabled_by_environment(fresh, monkeypatch) -> None:
    monkeypatch.setenv("HANDGRAD_FAST", "0")
    assert rowcopy.status() == (False, "disabled by HANDGRAD_FAST=0")


@needs_build
def test_built_once_then_loaded_from_the_cache(fresh, monkeypatch) -> None:
    assert rowcopy.status()[0]
    (built,) = fresh.iterdir()
    assert built.name.startswith("handgrad_rowcopy_") and built.suffix == ".so"
    monkeypatch.setattr(rowcopy, "build", Build(rowcopy._SOURCE, rowcopy._load))

    def no_second_build(*args: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(handgrad._build, "compile_c", no_second_build)
    assert rowcopy.status()[0]


@needs_build
@pytest.mark.parametrize(("world_size", "drop_last"), [(1, False), (1, True), (3, False)])
def test_loader_batches_equal_with_and_without_it(world_size, drop_last) -> None:
    x, y = rows(500, (28, 28), torch.float32), torch.arange(500)
    for rank in range(world_size):
        kw = dict(shuffle=True, seed=5, rank=rank, world_size=world_size, drop_last=drop_last)
        compiled = DataLoader(x, y, 64, **kw)
        plain = DataLoader(x, y, 64, compiled=False, **kw)
        for _ in range(2):
            for (xa, ya), (xb, yb) in zip(compiled, plain, strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
