"""Data-parallel training: buckets, and real multi-process runs on 127.0.0.1 (gloo). The ranks'
shards come from ``handgrad.data.DataLoader``, whose sharding is tested in test_data_loader.py.

The process tests start real ranks (a second or two each on a loaded machine) and use short
timeouts so that a broken failure path fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from handgrad.distributed import launch
from handgrad.distributed.context import DistContext, DistributedError, init_from_env
from handgrad.distributed.data_parallel import DataParallel, _buckets
from handgrad.distributed.inherit import Lifeline, parent_stdio
from handgrad.distributed.launch import (
    EXIT_PEER_LOST,
    _start_method,
    free_port,
    run,
)
from handgrad.errors import HandgradError
from handgrad.nn.layers import Linear

import dist_workers


# ------------------------------------------------------------------------------- buckets
def test_buckets_respect_cap_dtype_and_reverse_order() -> None:
    ts = [torch.zeros(100), torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(30)]
    buckets = _buckets(ts, cap_bytes=200)
    assert sorted(i for b in buckets for i in b) == [0, 1, 2, 3]
    for b in buckets:
        assert len({ts[i].dtype for i in b}) == 1
        assert len(b) == 1 or sum(ts[i].numel() * ts[i].element_size() for i in b) <= 200
    assert buckets[0][0] == 3  # the last parameter first: its gradient is ready first
    assert len(_buckets(ts, cap_bytes=2**20)) == 2  # one per dtype when everything fits


def test_single_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    model = dist_workers.make_model(0)
    dp = DataParallel(model, ctx)
    for p in model.parameters():
        p.g = torch.ones_like(p)
    dp.reduce_gradients()
    assert all(torch.equal(p.g, torch.ones_like(p)) for p in model.parameters())
    assert ctx.on_main(lambda: 42) == 42
    with ctx.main_first():
        pass


def test_bad_arguments() -> None:
    with pytest.raises(HandgradError, match="--nproc 0"):
        run(dist_workers.fail, 0, "raise")
    with pytest.raises(ValueError, match="bucket_mb"):
        DataParallel(Linear(2, 2), DistContext(), bucket_mb=0)


def test_init_from_env_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(
        HandgradError,
        match=r"lacks WORLD_SIZE, MASTER_ADDR, MASTER_PORT.*torchrun",
    ):
        init_from_env("cpu")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_lifeline_ends_a_forked_child_when_the_launcher_lets_go() -> None:
    """A forked child holds the pipe's write end too (fork copies every descriptor): ``hold``
    must close it, or the child would keep its own lifeline alive and never see its end."""
    lifeline = Lifeline()
    pid = os.fork()
    if pid == 0:  # the child: a rank that would run for a minute
        try:
            Lifeline.hold(lifeline.child_end, lifeline.write_fd, on_loss=7)
            time.sleep(60)
        finally:
            os._exit(1)
    try:
        time.sleep(0.2)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # alive while the launcher holds on
        lifeline.close()  # what the launcher's death does
        deadline = time.monotonic() + 5
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ended[0] == pid and os.waitstatus_to_exitcode(ended[1]) == 7
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# ------------------------------------------------------------------ real processes (gloo)
def train_args(tmp: Path, name: str) -> tuple:
    # A tiny bucket cap (600 bytes) splits this model's gradients into 2 buckets: the
    # multi-bucket path is what is tested. 6 steps of 16 on 64 samples cross an epoch; 64 is
    # a multiple of 2 ranks, so the DataLoader's shards leave no row out and 2 ranks take
    # exactly the steps of 1.
    return (str(tmp / name), str(tmp / f"{name}-data"), 6, 16, 0.05, 600 / 2**20)


def test_two_processes_match_one_process_and_only_rank0_writes(tmp_path, capfd) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    run(dist_workers.train, 1, *train_args(tmp_path, "one"), device="cpu")
    capfd.readouterr()
    run(dist_workers.train, 2, *train_args(tmp_path, "two"), device="cpu", timeout_s=60)
    out = capfd.readouterr().out

    assert sorted(os.listdir(tmp_path / "two")) == ["weights.safetensors"]  # rank 0's only
    with safe_open(str(tmp_path / "two" / "weights.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta == {
        "rank": "0", "world_size": "2", "calls_per_step": "2", "replicas_differ_by": "0.0"
    }  # fmt: skip
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step")] == [
        str(s) for s in range(1, 7)
    ]  # each step logged once: by rank 0 alone

    one = load_file(str(tmp_path / "one" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    start = dist_workers.make_model(100).state_dict()
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(one["layers.0.weight"], start["layers.0.weight"])  # it trained
    assert int(two["layers.1.count"]) == 6


@pytest.mark.parametrize(
    ("backend", "gpus"),
    [
        pytest.param("nccl", 2, marks=pytest.mark.skipif(
            torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")),
        pytest.param("gloo", 1, marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    ],
)  # fmt: skip
def test_cuda_ranks_match_one_gpu(tmp_path, backend: str, gpus: int) -> None:
    """NCCL with one GPU per rank; gloo with CUDA tensors lets 2 ranks share one GPU."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    run(dist_workers.train, 1, *train_args(tmp_path, "one"), device="cuda")
    run(dist_workers.train, 2, *train_args(tmp_path, "two"), device="cuda", backend=backend,
        timeout_s=120)  # fmt: skip
    one = load_file(str(tmp_path / "one" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize(
    ("how", "timeout", "cause"),
    [
        ("raise", 20, "rank 1: ValueError: boom at step 5"),
        ("kill", 20, "rank 1 was killed by signal SIGKILL"),
        ("stop", 2, "rank 1 did not finish and was stopped"),
    ],
)
def test_a_failing_rank_stops_the_job(how: str, timeout: int, cause: str) -> None:
    """Rank 1 raises, is killed, or hangs. Rank 0 notices by itself (connection closed, or the
    collective's timeout), exits with EXIT_PEER_LOST, and the error names rank 1 first."""
    start = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run(dist_workers.fail, 2, how, device="cpu", timeout_s=timeout)
    assert time.monotonic() - start < timeout + 25
    message = str(info.value)
    assert message.startswith(cause), message
    assert "\n" not in message
    rank0 = info.value.outcomes[0]
    assert rank0.status == EXIT_PEER_LOST and not rank0.stopped_by_launcher
    assert "rank 0/2: all_reduce failed" in rank0.message
    if how == "stop":
        assert f"(timeout {timeout} s)" in rank0.message


def launch_like_torchrun(local_ranks: list[int], fn, *args) -> list:
    """Start one process per entry (its LOCAL_RANK) as torchrun would; return them started."""
    context = multiprocessing.get_context(_start_method())
    port, stdio = free_port(), parent_stdio()
    procs = [
        context.Process(target=dist_workers.torchrun_style,
                        args=(r, lr, len(local_ranks), port, stdio, fn, *args))
        for r, lr in enumerate(local_ranks)
    ]  # fmt: skip
    for p in procs:
        p.start()
    return procs


def test_torchrun_style_survivor_exits_when_a_peer_is_killed(capfd) -> None:
    """Ranks started the way torchrun starts them (environment variables, ``run`` joining
    from the environment) and by nothing that would clean up after them: when rank 1 is
    killed, rank 0 exits by itself with EXIT_PEER_LOST and one clear line on stderr."""
    procs = launch_like_torchrun([0, 1], dist_workers.fail, "kill")
    try:
        procs[0].join(60)
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert procs[1].exitcode == -signal.SIGKILL
    assert procs[0].exitcode == EXIT_PEER_LOST
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("handgrad:")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("handgrad: error: rank 0/2: all_reduce failed after")
    assert "another rank died or stopped answering" in lines[0]


def test_main_first_runs_in_three_waves(tmp_path) -> None:
    """Two machines of two ranks (local ranks 0, 1, 0, 1): rank 0 alone first, then rank 2
    (the other machine's first rank), then ranks 1 and 3."""
    log = tmp_path / "log"
    procs = launch_like_torchrun([0, 1, 0, 1], dist_workers.waves, str(log))
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    events = log.read_text().split("\n")
    assert events[:4] == ["in 0", "out 0", "in 2", "out 2"]
    assert sorted(events[4:8]) == ["in 1", "in 3", "out 1", "out 3"]


def test_spawn_returns_when_a_rank_ends_between_two_looks(monkeypatch) -> None:
    """Regression: the wait loop read the ranks' exit codes twice per round; a rank ending in
    between left it waiting on an empty list of processes, forever (seen once in CI)."""
    import threading

    class EndsWhileLookedAt:
        """A finished rank whose first exit-code read still says "running"."""

        def __init__(self, *args, **kwargs) -> None:
            read, write = os.pipe()
            os.close(write)  # the sentinel is at end of file: readable, like a dead process
            self.sentinel, self._looks = read, 0

        def start(self) -> None:
            pass

        @property
        def exitcode(self) -> int | None:
            self._looks += 1
            return None if self._looks == 1 else 0

        def is_alive(self) -> bool:
            return False

        def join(self, timeout: float | None = None) -> None:
            pass

    class Context:
        Process = EndsWhileLookedAt

    monkeypatch.setattr(launch.mp, "get_context", lambda method: Context())
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (launch.spawn(print, 2, start_method="fork"), done.set()),
        daemon=True,
    )
    worker.start()
    assert done.wait(10), "spawn never returned"
