"""Downloads from public mirrors, SHA-256 verified, written only when complete.

Each file is tried mirror by mirror. Bytes stream into a temporary file beside the target
(``.<name>.<random>.part``) while being hashed; only when the size and the SHA-256 both match is
the file renamed into place. A failed mirror (HTTP error, dropped connection, timeout, wrong
size or checksum) leaves nothing behind, and the next mirror is tried.

The checksums are those TensorFlow Datasets records for the same files
(tensorflow/datasets, ``tensorflow_datasets/url_checksums/mnist.txt`` and
``fashion_mnist.txt``: URL, size, SHA-256). The mirrors serve byte-identical copies (torchvision
checks the same files by MD5), so one checksum holds for every mirror of a file.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from handgrad._io import atomic_file
from handgrad.errors import HandgradError

#: How a caller shows a download: ``bar(description, total_bytes)`` is a context manager that
#: gives ``advance(n_bytes)``. The command line passes a rich bar (``handgrad.app.ui``); a
#: library call shows nothing.
TransferBar = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


CHUNK = 1 << 16
TIMEOUT_S = 30.0
USER_AGENT = "handgrad (https://pypi.org/project/handgrad/)"


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its name (on the mirrors and in the cache), size and SHA-256."""

    name: str
    size: int
    sha256: str


#: Base URLs tried in order; a file's URL is ``base + name``.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TFDS's source
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's source
    ],
    "fashion-mnist": [
        # Zalando's repository, then their bucket (TFDS's and torchvision's source; an S3
        # website endpoint has no HTTPS, which the SHA-256 check makes safe to use).
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

#: Sizes and SHA-256 from tensorflow/datasets tensorflow_datasets/url_checksums/{mnist,
#: fashion_mnist}.txt.
FILES: dict[str, list[RemoteFile]] = {
    "mnist": [
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ],
    "fashion-mnist": [
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ],
}


class MirrorFailed(Exception):
    """One mirror did not deliver the right bytes (the next one is tried)."""


def open_url(url: str, timeout: float = TIMEOUT_S) -> BinaryIO:
    """Open ``url`` for reading (the one place that touches the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return urllib.request.urlopen(request, timeout=timeout)


def fetch_all(
    name: str,
    folder: Path,
    *,
    progress: TransferBar | None = None,
    files: Iterable[RemoteFile] | None = None,
) -> list[Path]:
    """Download every file of dataset ``name`` that ``folder`` does not hold yet."""
    paths = []
    for remote in FILES[name] if files is None else files:
        target = folder / remote.name
        if not target.is_file():
            fetch(remote, MIRRORS[name], target, progress=progress)
        paths.append(target)
    return paths


def fetch(
    remote: RemoteFile, mirrors: list[str], target: Path, *, progress: TransferBar | None = None
) -> Path:
    """Download ``remote`` to ``target`` from the first mirror that delivers it intact."""
    target.parent.mkdir(parents=True, exist_ok=True)
    bar = progress or no_bar
    failures = []
    for base in mirrors:
        url = base + remote.name
        try:
            with bar(f"{remote.name} from {_host(url)}", remote.size) as advance:
                _fetch_one(url, remote, target, advance)
            return target
        except MirrorFailed as exc:
            failures.append(f"{url}: {exc}")
    raise HandgradError(
        f"{target}: could not download {remote.name} ({'; '.join(failures) or 'no mirrors'}); "
        f"check the network, or download it by hand into {target.parent}"
    )


def _fetch_one(url: str, remote: RemoteFile, target: Path, advance: Callable[[int], None]) -> None:
    # An exception anywhere below leaves the target untouched and removes the partial file.
    with atomic_file(target, "wb", suffix=".part") as out:
        digest, size = hashlib.sha256(), 0
        try:
            with open_url(url) as response:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > remote.size:
                        raise MirrorFailed(f"sent more than the expected {remote.size:,} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    advance(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError/HTTPError/timeouts are OSErrors; IncompleteRead is a dropped body.
            raise MirrorFailed(_describe(exc)) from exc
        if size != remote.size:
            raise MirrorFailed(f"connection dropped after {size:,} of {remote.size:,} bytes")
        if digest.hexdigest() != remote.sha256:
            raise MirrorFailed(
                f"SHA-256 mismatch: got {digest.hexdigest()[:16]}..., expected "
                f"{remote.sha256[:16]}...; the file was refused"
            )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection dropped after {len(exc.partial):,} more bytes"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"


def _host(url: str) -> str:
    return url.split("/")[2] if "//" in url else url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
