"""Paths that are not plain data files get one line naming what they are: a loop of symbolic
links, a broken link, a FIFO, a folder that cannot be read; and labels are reported against
their own file, at their true value."""

from __future__ import annotations

import os
import pathlib
import signal
from pathlib import Path

import numpy as np
import pytest

from handgrad.data import load_dataset
from handgrad.data.formats.idx import write_idx
from handgrad.errors import HandgradError

from support import run_cli


def one_line(path: Path, pattern: str) -> str:
    with pytest.raises(HandgradError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "\n" not in message and pattern in message, message
    return message


def test_symlink_loop_is_not_reported_as_missing(tmp_path):
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    message = one_line(tmp_path / "a.npz", "a loop of symbolic links")
    assert "no such file" not in message


def test_broken_symlink_says_where_it_points(tmp_path):
    (tmp_path / "d.npz").symlink_to(tmp_path / "gone.npz")
    one_line(tmp_path / "d.npz", f"a broken symbolic link (to {tmp_path / 'gone.npz'})")


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if the test blocks for 5 seconds."""

    def timeout(signum, frame):
        raise TimeoutError("blocked reading a FIFO")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["data.npz", "train-images-idx3-ubyte"])
def test_fifo_as_data_is_refused_not_read(tmp_path, alarm, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    one_line(fifo, "is a FIFO (named pipe), not a regular file")
    r = run_cli("data", "info", str(fifo))
    assert r.status == 2 and "FIFO" in r.err and r.err.count("\n") == 1


def test_fifo_behind_a_symlink_is_refused(tmp_path, alarm):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "mnist.pkl.gz").symlink_to(tmp_path / "pipe")
    one_line(tmp_path / "mnist.pkl.gz", "is a FIFO (named pipe)")


def test_unreadable_folder_is_one_line(tmp_path, monkeypatch):
    """``chmod 000`` does not stop root (these tests may run as root), so the refusal the
    kernel would give is simulated where the folder is listed."""
    folder = tmp_path / "locked"
    folder.mkdir()
    listing = pathlib.Path.iterdir

    def denied(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", denied)
    one_line(folder, f"{folder}: permission denied; check the permissions of the folder")
    r = run_cli("data", "info", str(folder))
    assert r.status == 2 and "permission denied" in r.err and r.err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_for_real(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0)
    try:
        one_line(folder, "permission denied")
    finally:
        folder.chmod(0o755)


def _idx_pair(folder: Path, labels: np.ndarray) -> Path:
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((len(labels), 28, 28), np.uint8))
    return folder / "train-labels-idx1-ubyte"


def test_out_of_range_label_names_the_labels_file(tmp_path):
    labels = _idx_pair(tmp_path, np.arange(12) % 10)
    write_idx(labels, np.full(12, 200, np.uint8))
    message = one_line(tmp_path, "labels range over [200, 200]")
    assert message.startswith(str(labels)), message


def test_uint64_labels_print_as_their_true_value(tmp_path):
    x = np.zeros((12, 28, 28), np.uint8)
    y = np.full(12, 2**64 - 1, np.uint64)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    message = one_line(tmp_path / "d.npz", f"labels range over [{2**64 - 1}, {2**64 - 1}]")
    assert "[-" not in message
