"""``handgrad bench --device``: the device plumbing, checked without a GPU where it can be (the
``meta`` device runs every job's code without values; fakes stand in for CUDA's clock
synchronisation and allocator), and end to end on a GPU where there is one."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from handgrad.app import bench
from handgrad.app.commands.bench import _device
from handgrad.errors import HandgradError

from support import run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    res = run_cli("bench", "--device", "cuda", "--only", "W2")
    assert res.status == 2 and res.out == ""
    assert res.err.count("\n") == 1 and "no CUDA GPU is visible" in res.err
    assert _device("auto") == torch.device("cpu")


def test_bad_devices_are_one_line_errors() -> None:
    res = run_cli("bench", "--device", "warp9", "--only", "W2")
    assert res.status == 2 and res.err.count("\n") == 1 and "--device 'warp9'" in res.err
    with pytest.raises(HandgradError, match="--device meta"):
        _device("meta")


def test_cpu_clock_is_refused_on_cuda_before_anything_runs() -> None:
    # run_bench refuses before it touches CUDA, so this needs no GPU
    with pytest.raises(HandgradError, match="--clock cpu: process CPU time"):
        bench.run_bench(bench.Config(device="cuda", clock="cpu"))


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor a job holds (its data, models, optimizer state, buffers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, torch.nn.Module):
        return [*obj.parameters(), *obj.buffers()]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, seen)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v, seen)]
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith("handgrad"):
        return [t for v in vars(obj).values() for t in _tensors(v, seen)]
    return []


def test_every_variant_runs_on_the_chosen_device() -> None:
    """On ``meta`` any tensor left on the CPU (data, weights, the floor's buffers, a twin's
    running statistics) makes an operation fail, as it would on a GPU; and the compiled
    (CPU-only) fast path is never built in."""
    cfg = bench.Config(rows=256, repeats=1, memory=False, device="meta")
    workloads, skipped = bench.build_workloads(cfg)
    assert [w.key for w in workloads] == ["W1", "W1", "W2", "W3", "W4", "W5", "W5"]
    assert any("not on meta" in s and "C++ extension for CPU" in s for s in skipped)
    for w in workloads:
        labels = [v.label for v in w.variants]
        assert not any("fast" in label.lower() for label in labels), labels
        for v in w.variants:
            job = v.make()
            held = _tensors(job)
            assert held and all(t.device.type == "meta" for t in held), (w.key, v.label)
            if v.label == "Learner":
                # the Learner's progress bar reads the loss (.item()): no values on meta
                assert job._learner(job.batches).device == torch.device("meta")  # type: ignore[attr-defined]
                continue
            out = job.probe()
            assert all(t.device.type == "meta" for t in out.values()), (w.key, v.label)
            job.run()


def test_each_timed_interval_is_bracketed_by_sync() -> None:
    log: list[str] = []

    class Job:
        def run(self) -> None:
            log.append("run")

        def probe(self) -> dict[str, torch.Tensor]:
            return {}

    def clock() -> float:
        log.append("clock")
        return float(len(log))

    w = bench.Workload("W0", "t", 1, 2, [bench.Variant("a", Job), bench.Variant("b", Job)])
    times = bench.time_workload(w, lambda msg: None, clock, lambda: log.append("sync"))
    assert log[:2] == ["run", "run"]  # the warm-up, untimed
    assert log[2:] == ["sync", "clock", "run", "sync", "clock"] * 4
    assert all(len(ts) == 2 and all(t > 0 for t in ts) for ts in times.values())


def test_sync_is_cuda_synchronize_on_a_gpu_only(monkeypatch) -> None:
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    bench.make_sync(torch.device("cpu"))()
    assert calls == []
    bench.make_sync(torch.device("cuda:0"))()
    assert calls == [torch.device("cuda:0")]


def test_device_peak_counts_only_the_run_over_what_was_allocated() -> None:
    """The allocator's peak is reset after the job is built and after a warm-up probe on
    another job, and reported over what was allocated just before the run."""
    events: list[str] = []

    class Memory:
        allocated_now, peak = 0, 0

        def synchronize(self) -> None:
            events.append("sync")

        def empty_cache(self) -> None:
            events.append("empty")

        def reset_peak(self) -> None:
            events.append("reset")
            self.peak = self.allocated_now

        def allocated(self) -> int:
            return self.allocated_now

        def max_allocated(self) -> int:
            return self.peak

    mem = Memory()

    class Job:
        def __init__(self) -> None:
            events.append("make")
            mem.allocated_now += 1000  # its model and data
            mem.peak = max(mem.peak, mem.allocated_now)

        def probe(self) -> dict[str, torch.Tensor]:
            events.append("probe")
            mem.peak = max(mem.peak, mem.allocated_now + 10_000)  # before the reset: ignored
            return {}

        def run(self) -> None:
            events.append("run")
            mem.peak = max(mem.peak, mem.allocated_now + 300)  # a temporary of 300 bytes

    assert bench.measure_device_memory([bench.Variant("v", Job)], mem) == {"v": 300}
    assert events == ["make", "probe", "make", "sync", "empty", "reset", "run", "sync"]


def test_tf32_is_off_while_the_bench_runs_on_cuda() -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = True, True
        with bench.exact_float32(torch.device("cpu")) as flags:
            assert flags == {} and cudnn.allow_tf32
        with bench.exact_float32(torch.device("cuda")) as flags:
            assert flags == {"matmul_tf32": False, "cudnn_tf32": False}
            assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert matmul.allow_tf32 and cudnn.allow_tf32  # restored
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_a_gpu_report_names_the_gpu_and_its_memory() -> None:
    row = {
        "label": "torch eager", "role": "torch", "median": 0.5, "speedup": None,
        "gflops": 10.0, "peak_fraction": 0.1, "peak_bytes": 3 * 2**20, "guard": None,
        "baseline": None, "overhead": None,
    }  # fmt: skip
    report = {
        "machine": {
            "device": "cuda:0 (NVIDIA H200)", "gpu": "NVIDIA H200", "cuda": "13.0",
            "cpu": "host cpu", "cores": 16, "torch": "2.11.0", "threads": 16,
            "gemm_peak_gflops": 50_000.0, "load_average": [0.0, 0.0, 0.0], "date": "today",
            "float32": {"matmul_tf32": False, "cudnn_tf32": False},
        },
        "config": {"clock": "wall"},
        "seconds": 1.0,
        "workloads": [{"key": "W2", "title": "epoch", "unit": "s", "rows": 1, "results": [row]}],
        "targets": [],
    }  # fmt: skip
    md = bench.to_markdown(report)
    assert "GPU cuda:0 (NVIDIA H200), CUDA 13.0" in md and "TF32 off" in md
    assert "| peak GPU mem (allocated) |" in md and "| 3.0 MiB |" in md
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(bench.render(report))
    text = console.export_text()
    assert "NVIDIA H200" in text and "peak GPU mem" in text


# ----------------------------------------------------------------------------- on a GPU
def _bench_json(*argv: str) -> tuple[int, dict[str, Any], str]:
    res = run_cli("bench", *argv, "--json", "-")
    report = json.loads(res.out[res.out.index("{") :]) if "{" in res.out else {}
    return res.status, report, res.err


def _check_gpu_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    assert m["device"].startswith("cuda") and m["gpu"] and m["gemm_peak_gflops"] > 100
    assert m["float32"] == {"matmul_tf32": False, "cudnn_tf32": False}
    assert any("C++ extension for CPU" in s for s in report["skipped"])
    for w in report["workloads"]:
        labels = [r["label"] for r in w["results"]]
        assert not any("fast" in label.lower() for label in labels), labels
        for r in w["results"]:
            assert all(math.isfinite(t) and t > 0 for t in r["times"]), r
            if r["role"] == "handgrad":
                assert r["guard"]["ok"], (w["key"], r["label"], r["guard"])
                assert math.isfinite(r["speedup"]) and r["speedup"] > 0


@needs_cuda
def test_bench_on_cuda_times_every_variant() -> None:
    status, report, err = _bench_json("--device", "cuda", "--quick", "--only", "W1,W2",
                                      "--repeats", "2", "--no-memory")  # fmt: skip
    assert status == 0, err
    _check_gpu_report(report)
    assert [w["key"] for w in report["workloads"]] == ["W1", "W1", "W2"]
    assert all(r["peak_bytes"] is None for w in report["workloads"] for r in w["results"])


@needs_cuda
def test_bench_on_cuda_measures_gpu_memory() -> None:
    status, report, err = _bench_json("--device", "cuda", "--rows", "4096", "--repeats", "1",
                                      "--only", "W2,W5")  # fmt: skip
    assert status == 0, err
    _check_gpu_report(report)
    assert "max_memory_allocated" in report["memory_method"]
    for w in report["workloads"]:
        for r in w["results"]:
            if r["role"] == "floor":
                assert r["peak_bytes"] is None
            else:  # every variant allocates activations on the device
                assert r["peak_bytes"] is not None and 0 < r["peak_bytes"] < 2**30, r


@needs_cuda
def test_cpu_clock_on_cuda_is_a_one_line_error() -> None:
    res = run_cli("bench", "--device", "cuda", "--clock", "cpu", "--only", "W2")
    assert res.status == 2 and res.err.count("\n") == 1 and "--clock cpu" in res.err
