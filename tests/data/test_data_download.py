"""Named datasets: where they are found, and downloads from a local HTTP server (127.0.0.1).

The server is threaded, serves small generated IDX files, can drop a connection mid-body or
answer 404, and shuts itself down after a deadline even if a test hangs. Mirror lists and
checksums are monkeypatched; any URL that is not on 127.0.0.1 fails the test.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

from handgrad.app import ui
from handgrad.data import load_dataset
from handgrad.data.formats.idx import write_idx
from handgrad.data.sources import download, registry
from handgrad.data.sources.download import RemoteFile
from handgrad.errors import HandgradError

SERVER_DEADLINE_S = 30.0  # the server stops by itself after this, whatever happens


class Server:
    """Serves ``files`` under ``/good/``; ``/drop/`` sends half the body then closes the
    connection; anything else is 404. ``requests`` logs every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold a thread for long

            def do_GET(self) -> None:
                server.requests.append(self.path)
                mode, _, name = self.path.strip("/").partition("/")
                body = server.files.get(name)
                if body is None or mode not in ("good", "drop"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "good":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.watchdog = threading.Timer(SERVER_DEADLINE_S, self.httpd.shutdown)

    def __enter__(self) -> Server:
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache, no real system folder, no lesson file, no network beyond 127.0.0.1."""
    monkeypatch.setenv("HANDGRAD_DATA", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "system"]})
    monkeypatch.setattr(download, "MIRRORS", {"mnist": [], "fashion-mnist": []})
    real_open = download.open_url

    def local_only(url: str, timeout: float = 5.0):
        assert urlsplit(url).hostname == "127.0.0.1", f"test tried the network: {url}"
        return real_open(url, timeout=timeout)

    monkeypatch.setattr(download, "open_url", local_only)


@pytest.fixture
def remote(tmp_path, server, monkeypatch) -> dict[str, bytes]:
    """A generated MNIST-like IDX set (60 train, 20 test), served and registered as 'mnist'."""
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(60) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(20) % 10).astype(np.uint8),
    }
    staging = tmp_path / "staging"
    for name, a in arrays.items():
        server.files[name] = write_idx(staging / name, a).read_bytes()
    files = [RemoteFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in server.files.items()]
    monkeypatch.setattr(download, "FILES", {"mnist": files, "fashion-mnist": files})
    monkeypatch.setattr(download, "MIRRORS", {"mnist": [f"{server.base}/good/"]})
    return server.files


def cache_listing(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------ downloads
def test_download_succeeds_and_is_then_cached(tmp_path, server, remote):
    ds = load_dataset("mnist", progress=False)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50, 10, 20)
    assert ds.source == str(tmp_path / "cache" / "mnist")
    assert cache_listing(tmp_path) == ["mnist", *sorted(f"mnist/{n}" for n in remote)]
    for name, blob in remote.items():
        assert (tmp_path / "cache" / "mnist" / name).read_bytes() == blob
    asked = len(server.requests)
    again = load_dataset("mnist")
    assert len(server.requests) == asked  # served from the cache
    assert torch.equal(again.train.x, ds.train.x)


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, server, remote, monkeypatch):
    files = list(download.FILES["mnist"])
    files[0] = RemoteFile(files[0].name, files[0].size, "0" * 64)
    monkeypatch.setattr(download, "FILES", {"mnist": files})
    with pytest.raises(HandgradError, match=r"SHA-256 mismatch.*the file was refused") as info:
        load_dataset("mnist")
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert cache_listing(tmp_path) == ["mnist"]  # the folder, empty: no file, no .part


def test_dropped_connection_leaves_nothing_half_written(tmp_path, server, remote, monkeypatch):
    monkeypatch.setattr(download, "MIRRORS", {"mnist": [f"{server.base}/drop/"]})
    with pytest.raises(HandgradError, match=r"connection dropped after [\d,]+ of [\d,]+ bytes"):
        load_dataset("mnist")
    assert cache_listing(tmp_path) == ["mnist"]
    assert server.requests == ["/drop/train-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("first", ["missing", "drop"])
def test_second_mirror_is_used_when_the_first_fails(tmp_path, server, remote, monkeypatch, first):
    mirrors = [f"{server.base}/{first}/", f"{server.base}/good/"]
    monkeypatch.setattr(download, "MIRRORS", {"mnist": mirrors})
    ds = load_dataset("mnist")
    assert len(ds.train) == 50
    for name in remote:
        assert server.requests.count(f"/{first}/{name}") == 1
        assert server.requests.count(f"/good/{name}") == 1
    assert not [p for p in cache_listing(tmp_path) if p.endswith(".part")]


def test_every_mirror_failing_names_each_failure(tmp_path, server, remote, monkeypatch):
    monkeypatch.setattr(
        download, "MIRRORS", {"mnist": [f"{server.base}/missing/", f"{server.base}/drop/"]}
    )
    with pytest.raises(HandgradError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "HTTP 404" in message and "connection dropped" in message
    assert f"download it by hand into {tmp_path / 'cache' / 'mnist'}" in message
    assert "\n" not in message


def test_interrupted_download_is_resumed_file_by_file(tmp_path, server, remote):
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(remote["train-labels-idx1-ubyte.gz"])
    load_dataset("mnist")
    assert sorted(server.requests) == sorted(
        f"/good/{n}" for n in remote if n != "train-labels-idx1-ubyte.gz"
    )


def test_explicit_data_dir_is_the_cache(tmp_path, server, remote):
    ds = load_dataset("mnist", data_dir=tmp_path / "elsewhere")
    assert ds.source == str(tmp_path / "elsewhere" / "mnist")
    assert cache_listing(tmp_path) == []


# ------------------------------------------------------------------------ where to look
def _idx_folder(folder: Path, n_train: int = 12) -> Path:
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((n_train, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(n_train, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((6, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    return folder


def test_nothing_found_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(HandgradError) as info:
        load_dataset("fashion-mnist", download=False)
    message = str(info.value)
    assert message.startswith("fashion-mnist: not found (looked in ")
    assert str(tmp_path / "cache" / "fashion-mnist") in message
    assert str(tmp_path / "system") in message


def test_lesson_file_in_the_working_folder_is_used_for_mnist(tmp_path):
    import pickle

    x, y = np.zeros((4, 784), np.float32), np.arange(4)
    Path("data").mkdir()
    Path("data/mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)))))
    ds = load_dataset("mnist", download=False)
    assert ds.source == str(tmp_path / "data" / "mnist.pkl.gz")
    assert ds.name == "mnist" and len(ds.train) == 4


def test_system_folder_is_used_and_the_cache_wins_over_it(tmp_path):
    _idx_folder(tmp_path / "system", n_train=12)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == str(tmp_path / "system") and ds.classes[9] == "Ankle boot"
    _idx_folder(tmp_path / "cache" / "fashion-mnist", n_train=18)
    ds = load_dataset("FASHION-MNIST", download=False)
    assert ds.source == str(tmp_path / "cache" / "fashion-mnist") and len(ds.train) == 15


def test_a_path_object_named_like_a_dataset_is_a_path(tmp_path):
    with pytest.raises(HandgradError, match="mnist: no such file or folder"):
        load_dataset(Path("mnist"))


def test_named_dataset_must_hold_28x28_images(tmp_path):
    folder = tmp_path / "cache" / "mnist"
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((12, 20, 20), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(12, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((6, 20, 20), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    with pytest.raises(HandgradError, match="holds 20x20 images, but mnist has 28x28"):
        load_dataset("mnist", download=False)


def test_half_downloaded_cache_is_not_loaded(tmp_path):
    folder = _idx_folder(tmp_path / "cache" / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(HandgradError, match="not found"):
        load_dataset("mnist", download=False)


def test_data_root_follows_the_environment(tmp_path, monkeypatch):
    assert registry.data_root() == tmp_path / "cache"
    assert registry.data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("HANDGRAD_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(registry.sys, "platform", "linux")
    assert registry.data_root() == tmp_path / "xdg" / "handgrad"


def test_progress_bar_only_on_a_terminal(tmp_path, server, remote, monkeypatch, capsys):
    import io

    from rich.console import Console

    load_dataset("mnist", data_dir=tmp_path / "a", progress=ui.download_bar)
    assert capsys.readouterr().err == ""  # not a terminal: quiet
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr(ui, "make_console", lambda stderr=False: terminal)
    load_dataset("mnist", data_dir=tmp_path / "b", progress=ui.download_bar)
    assert "train-images-idx3-ubyte.gz from 127.0.0.1" in screen.getvalue()
    screen.truncate(0)
    load_dataset("mnist", data_dir=tmp_path / "c")  # a library call shows nothing
    assert screen.getvalue() == ""
