"""``handgrad bench``: the table's structure and the correctness guard (never the speed)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from handgrad.app import bench
from handgrad.nn.layers import ReLU

from support import run_cli

TINY = ("--rows", "256", "--repeats", "1", "--no-memory", "--no-fast")


def test_quick_bench_prints_table_and_json(tmp_path) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    res = run_cli(
        "bench", "--quick", *TINY, "--only", "W1,W2,W5", "--device", "cpu",
        "--json", str(out), "--markdown", str(md),
    )  # fmt: skip
    assert res.status == 0, res.err + res.out
    for col in ("workload", "variant", "median", "vs torch", "GFLOP/s", "of peak", "peak mem"):
        assert col in res.out
    assert "W1 full batch" in res.out and "W2 epoch 784-50-10" in res.out and "rows/s" in res.out
    # the speed-ups, and no target audit unless asked (--targets)
    assert re.search(r"^W2 epoch 784-50-10 .*: speed-up \d+\.\d\dx over torch eager", res.out, re.M)
    assert "target" not in res.out
    report = json.loads(out.read_text())
    assert report["machine"]["gemm_peak_gflops"] > 0
    assert report["machine"]["device"] == "cpu" and report["machine"]["gpu"] is None
    assert report["config"]["device"] == "cpu" and "VmHWM" in report["memory_method"]
    keys = [w["key"] for w in report["workloads"]]
    assert keys == ["W1", "W1", "W2", "W5", "W5"]
    for w in report["workloads"]:
        roles = [r["role"] for r in w["results"]]
        assert roles[0] == "torch" and "handgrad" in roles
        assert w["flops"] > 0
        for r in w["results"]:
            assert len(r["times"]) == 1 and r["median"] > 0
            if r["role"] == "handgrad":
                assert r["guard"]["ok"], r["guard"]
                assert r["speedup"] == pytest.approx(w["results"][0]["median"] / r["median"])
    w1 = report["workloads"][0]
    assert [r["label"] for r in w1["results"]][-1] == "GEMMs alone"
    assert any("W2" in t["target"] and "2.5x" in t["target"] for t in report["targets"])
    table = md.read_text().splitlines()
    assert table[2].startswith("| workload | variant | median | vs torch |")
    assert sum(line.startswith("| W") for line in table) == len(report["workloads"])


def test_guard_refuses_a_wrong_gradient(monkeypatch) -> None:
    def wrong_bwd(self, out, x):  # a wrong derivative: twice the right one
        x.g = 2 * out.g * (x > 0)

    monkeypatch.setattr(ReLU, "bwd", wrong_bwd)
    res = run_cli("bench", "--quick", *TINY, "--only", "W2", "--json", "-", "--targets")
    assert res.status == 1
    assert "target " in res.err  # --targets prints the audit
    report = json.loads(res.out[res.out.index("{") :])
    (w2,) = report["workloads"]
    hg = next(r for r in w2["results"] if r["label"] == "handgrad")
    assert not hg["guard"]["ok"] and hg["speedup"] is None
    assert "grad:layers.0" in hg["guard"]["detail"]
    assert "refused" in res.err and "WRONG" in res.err


def test_compare_names_what_differs() -> None:
    ref = {"grad:w": torch.ones(3), "loss": torch.tensor(1.0)}
    assert bench.compare({"grad:w": torch.ones(3), "loss": torch.tensor(1.0)}, ref).ok
    assert "missing" in bench.compare({"grad:w": torch.ones(3)}, ref).detail
    bad = bench.compare({"grad:w": torch.tensor([1.0, 1.0, 1.1]), "loss": torch.tensor(1.0)}, ref)
    assert not bad.ok and bad.detail.startswith("grad:w differs by 1.0e-01")
    nan = bench.compare({"grad:w": torch.full((3,), float("nan")), "loss": torch.tensor(1.0)}, ref)
    assert not nan.ok


@pytest.mark.skipif(not bench.memory_supported(), reason="peak RSS needs Linux /proc")
def test_peak_memory_counts_what_the_workload_allocates() -> None:
    cfg = bench.Config(rows=4096, repeats=1, only=("W5",), fast=False)
    workloads, _ = bench.build_workloads(cfg)
    w = next(w for w in workloads if w.batch == 1024)
    peaks = bench.measure_memory(cfg, w, w.variants[:2])
    assert peaks is not None and set(peaks) == {v.label for v in w.variants[:2]}
    # a (1024, 256) float32 activation is 1 MiB; the whole pass stays far below 64 MiB
    assert all(2**20 <= peak < 64 * 2**20 for peak in peaks.values())


def test_bad_options_are_one_line_errors() -> None:
    res = run_cli("bench", "--only", "W9")
    assert res.status == 2 and "unknown ['W9']" in res.err
    res = run_cli("bench", "--rows", "0")
    assert res.status == 2 and "--rows 0" in res.err
    res = run_cli("bench", "--json", "/proc/bench.json")  # refused before any timing
    assert res.status == 2 and "--json /proc/bench.json: cannot write" in res.err


def test_updated_parameters_may_differ_only_in_a_few_elements() -> None:
    """Adam steps every weight by about lr, whatever the gradient's size: where a gradient is
    within rounding of zero the libraries may step differently; a wrong update rule moves
    nearly every element and is refused."""
    ref = {"param:w": torch.linspace(-1, 1, 10_000)}
    few = ref["param:w"].clone()
    few[:5] += 0.01  # 0.05% of the elements
    assert bench.compare({"param:w": few}, ref).ok
    assert not bench.compare({"param:w": ref["param:w"] * 1.01}, ref).ok
    assert not bench.compare({"grad:w": few}, {"grad:w": ref["param:w"]}).ok  # gradients: strict
