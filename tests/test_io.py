"""The one atomic write: a target is either the old file or the whole new one, never half."""

from __future__ import annotations

import json
import os

import pytest

from handgrad._io import atomic_file, temporary_beside, write_bytes, write_json, write_text


def test_an_error_midway_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_writes_are_whole_and_readable_as_any_user_file(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        path = write_bytes(tmp_path / "sub" / "a.bin", b"\x00\x01")
        assert path.read_bytes() == b"\x00\x01"
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(umask)
    assert write_text(tmp_path / "t.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    assert json.loads(write_json(tmp_path / "j.json", {"a": [1, 2]}).read_text()) == {"a": [1, 2]}
    assert (tmp_path / "j.json").read_text().endswith("}\n")


def test_temporary_beside_is_removed_unless_renamed(tmp_path) -> None:
    with temporary_beside(tmp_path / "x.so") as tmp:
        assert tmp.parent == tmp_path and tmp.exists()
    assert not tmp.exists()
    with temporary_beside(tmp_path / "y.so") as tmp:
        tmp.write_bytes(b"lib")
        os.replace(tmp, tmp_path / "y.so")
    assert (tmp_path / "y.so").read_bytes() == b"lib"
