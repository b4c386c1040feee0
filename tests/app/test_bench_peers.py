"""``handgrad bench``'s peers: each peer's check catches a wrong peer, a peer that is not
installed is one line, and the table puts the peers in columns (never the speed)."""

from __future__ import annotations

import builtins
import json
import os
import types

import pytest
import torch

from handgrad.app import bench
from handgrad.app.bench import peers, targets
from handgrad.app.bench import run as bench_run
from handgrad.app.bench.peers import compile_peer, jax_peer
from handgrad.app.bench.render import peer_table
from handgrad.app.bench.training import TorchTrain
from handgrad.app.commands.bench import parse_config

from support import run_cli

TINY = ("--rows", "128", "--repeats", "1", "--no-memory", "--no-fast")
has_jax = jax_peer.status()[0]
needs_jax = pytest.mark.skipif(not has_jax, reason="JAX is not installed (handgrad[peers])")
needs_inductor = pytest.mark.skipif(
    not compile_peer.status()[0], reason="torch.compile cannot compile here"
)


def guards(key: str, names: tuple[str, ...]) -> dict[str, dict]:
    """Every row of workload ``key`` at a tiny size, each peer checked (and timed once)."""
    cfg = bench.Config(rows=128, repeats=1, memory=False, fast=False, only=(key,), peers=names)
    report = bench.run_bench(cfg)
    return {r["label"]: r for r in report["workloads"][0]["results"]}


def check(rows: dict, label: str) -> bool:
    assert rows[label]["role"] == "peer"
    return rows[label]["guard"]["ok"]


# ----------------------------------------------------------------- each peer, right and wrong
@needs_jax
@pytest.mark.parametrize("key", ["W1", "W3", "W4"])
def test_jax_agrees_with_pytorch(key: str) -> None:
    rows = guards(key, ("jax",))
    labels = ["JAX jit step"] if key == "W1" else list(jax_peer.VARIANTS)
    for label in labels:
        assert check(rows, label), rows[label]["guard"]
        assert rows[label]["first_step"] > 0 and rows[label]["speedup"] > 0


@needs_jax
def test_a_wrong_jax_update_is_refused_and_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = jax_peer.update

    def wrong(opt, lr, *args):  # a wrong learning rate: the updated weights differ
        return real(opt, 1.5 * lr, *args)

    monkeypatch.setattr(jax_peer, "update", wrong)
    rows = guards("W2", ("jax",))
    for label in jax_peer.VARIANTS:
        assert not check(rows, label) and "param:" in rows[label]["guard"]["detail"]
        assert rows[label]["speedup"] is None and rows[label]["times"] == []


@needs_jax
def test_a_wrong_jax_gradient_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = jax_peer.mlp
    monkeypatch.setattr(jax_peer, "mlp", lambda params, x: real(params, 1.01 * x))
    rows = guards("W1", ("jax",))
    assert not check(rows, "JAX jit step")


@needs_inductor
@pytest.mark.compiled
@pytest.mark.slow
def test_torch_compile_agrees_and_a_wrong_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = guards("W2", ("compile",))
    for label, _ in compile_peer.VARIANTS:
        assert check(rows, label), rows[label]["guard"]
    real = compile_peer._compile

    def wrong(fn):  # what is compiled computes a loss 10% too large
        def scaled(*args):
            out = fn(*args)
            return None if out is None else 1.1 * out

        return real(scaled)

    monkeypatch.setattr(compile_peer, "_compile", wrong)
    rows = guards("W2", ("compile",))
    for label, _ in compile_peer.VARIANTS:
        assert not check(rows, label)
    assert rows["handgrad"]["guard"]["ok"]  # only the peer was broken


def test_a_peer_that_raises_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec):
        def make():
            raise RuntimeError("no kernel for this\nsecond line")

        return [("broken peer", make)]

    monkeypatch.setattr(peers, "_module", lambda name: fake_module(broken))
    rows = guards("W2", ("jax",))
    assert rows["broken peer"]["guard"]["detail"] == "failed: RuntimeError: no kernel for this"
    assert rows["broken peer"]["times"] == []


# ------------------------------------------------------------------ not installed: one line
def test_a_missing_jax_is_one_line_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_jax(name, *args, **kwargs):
        if name == "jax" or name.startswith("jax."):
            raise ImportError("No module named 'jax'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jax)
    res = run_cli("bench", *TINY, "--only", "W2", "--peers", "jax")
    assert res.status == 0, res.err
    lines = [ln for ln in res.out.splitlines() if "pip install 'handgrad[peers]'" in ln]
    assert lines == ["skipped: peer jax: JAX is not installed: pip install 'handgrad[peers]'"]
    assert "JAX jit step" not in res.out


# ----------------------------------------------------------------------- the table, the CLI
def fake_peer(scale: float = 1.0):
    """A peer that is PyTorch eager under another name (``scale`` != 1: a wrong lr)."""

    def variants(spec):
        def make():
            lr = spec.lr * scale
            return TorchTrain(spec.make_torch, spec.batches, spec.names, spec.opt, lr)

        return [("fake peer", make)]

    return fake_module(variants)


def fake_module(variants) -> types.SimpleNamespace:
    """A peer module: what :mod:`handgrad.app.bench.peers` asks of ``jax_peer``."""
    return types.SimpleNamespace(
        status=lambda: (True, ""),
        variants=variants,
        prepare=lambda threads: None,
        subnormals=lambda: "subnormals in the fake peer: kept",
    )


def test_the_table_has_the_peers_as_columns(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(peers, "_module", lambda name: fake_peer())
    md = tmp_path / "bench.md"
    res = run_cli("bench", *TINY, "--only", "W2,W3", "--peers", "jax", "--json", "-",
                  "--markdown", str(md))  # fmt: skip
    assert res.status == 0, res.err
    report = json.loads(res.out[res.out.index("{") :])
    header, rows = peer_table(report)
    assert header == ["workload", "torch eager", "handgrad (best)", "fake peer"]
    assert [r[0] for r in rows] == ["W2", "W2 first step", "W3", "W3 first step"]
    for w, row in zip(report["workloads"], rows[::2], strict=True):
        peer = next(r for r in w["results"] if r["label"] == "fake peer")
        best = targets.best_variant(w)
        assert row[3].endswith(f", {peer['median'] / best['median']:.2f}x")
    assert "| workload | torch eager | handgrad (best) | fake peer |" in md.read_text()
    assert "fake peer" in res.err and "over fake peer" in res.err  # the terminal's table, lines
    assert "subnormals as shipped" in res.err and "subnormals in the fake peer: kept" in res.err


def test_a_wrong_peer_is_flagged_but_handgrad_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "_module", lambda name: fake_peer(scale=2.0))
    res = run_cli("bench", *TINY, "--only", "W2", "--peers", "jax")
    assert res.status == 0, res.err  # a peer's error is not handgrad's
    assert "refused" in res.out and "W2 fake peer" in res.out and "WRONG" in res.out


def test_peer_options() -> None:
    def peers_of(*argv: str) -> tuple[str, ...]:
        from handgrad.app.cli import build_parser

        return parse_config(build_parser().parse_args(["bench", *argv])).peers

    assert peers_of() == ("jax", "compile")  # a full run: every peer
    assert peers_of("--quick") == ()  # --quick stays quick
    assert peers_of("--quick", "--peers", "compile,jax,jax") == ("compile", "jax")
    assert peers_of("--no-peers") == ()
    res = run_cli("bench", "--peers", "tinygrad")
    assert res.status == 2 and "--peers 'tinygrad': unknown ['tinygrad']" in res.err


def test_ftz_flushes_every_torch_thread_during_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = bench_run._run_bench

    def spy(*args):
        n = 1 << 20
        seen.append(int(((torch.full((n,), 2.0**-126) * 0.5) != 0).sum()))
        return real(*args)

    monkeypatch.setattr(bench_run, "_run_bench", spy)
    for ftz in (True, False):
        bench.run_bench(bench.Config(rows=64, repeats=1, memory=False, fast=False, only=("W5",),
                                     ftz=ftz))  # fmt: skip
    assert seen == [0, 1 << 20]
    assert int(((torch.full((8,), 2.0**-126) * 0.5) != 0).sum()) == 8  # restored


def test_threads_that_cannot_reach_jax_are_said() -> None:
    cores = os.cpu_count() or 1
    assert jax_peer.prepare(None) is None and jax_peer.prepare(cores) is None
    note = jax_peer.prepare(cores + 1)
    assert (
        note == f"JAX: --threads {cores + 1} does not reach XLA's thread pool (all {cores} cores)"
    )
