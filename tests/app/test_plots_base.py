from __future__ import annotations

import pytest

from handgrad.app.plots import new_figure, save_png


def test_save_png_writes_atomically(tmp_path) -> None:
    fig, ax = new_figure(4, 3)
    ax.plot([0, 1], [1, 0])
    out = save_png(fig, tmp_path / "sub" / "line.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["line.png"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch) -> None:
    fig, _ = new_figure(4, 3)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_png(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
