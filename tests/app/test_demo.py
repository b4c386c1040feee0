from __future__ import annotations

from handgrad.app.demo import run_lesson

from support import run_cli


def test_lesson_workload_matches_autograd() -> None:
    r = run_lesson(rows=500, features=784, hidden=50, repeats=1)
    assert set(r.grad_errors) == {
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
        "input",
    }
    assert max(r.grad_errors.values()) < 1e-5
    assert r.loss_randn > 50 * r.loss_kaiming  # the lesson's init explodes, Kaiming does not
    assert all(t > 0 for pair in r.times.values() for t in pair)


def test_demo_cli() -> None:
    res = run_cli("demo", "--rows", "300", "--repeats", "1")
    assert res.status == 0, res.err
    assert "forward" in res.out and "backward" in res.out and "match autograd" in res.out
