"""Reading a data file's bytes: gzip detected by content, truncation and emptiness reported,
and one cap on how much a data file may hold.

Every error is a one-line :class:`~handgrad.errors.HandgradError` of the form
``<file>: <problem>; <fix>``.

The cap: no data file may hold more than :func:`max_data` bytes once decompressed, which bounds
MNIST-class data to rows x features <= that many pixels. The default, 2**30 (1 GiB: 1.3 million
28x28 images, 23 times MNIST's training set), is raised with the environment variable
``HANDGRAD_MAX_DATA`` (bytes, e.g. ``HANDGRAD_MAX_DATA=4e9``). Each reader also checks every size
a file *claims* (an IDX or ``.npy`` header, an array a pickle asks for) against the bytes really
there before it allocates anything.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handgrad.errors import HandgradError

GZIP_MAGIC = b"\x1f\x8b"
MAX_DATA_ENV = "HANDGRAD_MAX_DATA"
DEFAULT_MAX_DATA = 2**30
CHUNK = 1 << 20  # gzip is decompressed this many bytes at a time, to stop at the cap
#: Names for what ``stat`` calls a file that is neither a regular file nor a folder.
SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def bad_file(path: Path | str, problem: str, fix: str) -> HandgradError:
    """The one error shape of this package: the file, what is wrong with it, what to do."""
    return HandgradError(f"{path}: {problem}; {fix}")


def max_data() -> int:
    """The most bytes a data file may hold once decompressed (see the module docstring)."""
    text = os.environ.get(MAX_DATA_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_DATA
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = -1.0
    if not 1 <= value < 2**63:
        raise HandgradError(
            f"{MAX_DATA_ENV}={text!r}: not a number of bytes; set it to e.g. 4e9 or unset it"
        )
    return int(value)


def over_limit(path: Path | str, problem: str) -> HandgradError:
    """The error for a file that holds more than :func:`max_data` bytes (``problem`` says how)."""
    limit = max_data()
    return bad_file(
        path,
        f"{problem}, over the limit of {limit:,} bytes for one data file",
        f"if the file is genuine, raise the limit (e.g. {MAX_DATA_ENV}={4 * limit:.0e})",
    )


def path_status(
    path: Path, missing: str = "no such file", fix: str = "check the path"
) -> os.stat_result:
    """``path.stat()``, with each way it fails as one line: missing (or a broken link), a loop of
    symbolic links, permission denied. ``missing`` and ``fix`` word the missing case."""
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise bad_file(path, f"a broken symbolic link (to {target})", fix) from None
        raise bad_file(path, missing, fix) from None
    except PermissionError:
        raise bad_file(
            path, "permission denied", "check the permissions of the file and of its folders"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise bad_file(
                path, "a loop of symbolic links (a link leads back to itself)", "fix the link"
            ) from None
        raise bad_file(path, f"cannot be read ({exc.strerror})", "check the path") from None


def refuse_special(path: Path, mode: int) -> None:
    """Refuse what is neither a regular file nor a folder: reading a FIFO blocks forever."""
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
        raise bad_file(path, f"is {kind}, not a regular file", "give the data file itself")


@contextmanager
def folder_errors(folder: Path) -> Iterator[None]:
    """Turn a folder that cannot be listed or searched into one line, not a traceback."""
    try:
        yield
    except PermissionError as exc:
        where = exc.filename or folder
        raise bad_file(
            where, "permission denied", "check the permissions of the folder (ls -ld)"
        ) from None


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic number.

    Only regular files are read, and at most :func:`max_data` bytes, before or after
    decompression. A gzip stream that stops early (an interrupted download or copy) is reported
    as truncated, a damaged one as corrupt, an empty file as empty.
    """
    st = path_status(path)
    if stat.S_ISDIR(st.st_mode):
        raise bad_file(path, "is a folder, not a file", "give the file inside it")
    refuse_special(path, st.st_mode)
    if st.st_size > max_data():
        raise over_limit(path, f"the file holds {st.st_size:,} bytes")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise bad_file(path, f"cannot be read ({exc.strerror})", "check its permissions") from exc
    if not raw:
        raise bad_file(path, "the file is empty (0 bytes)", "copy or download it again")
    if not raw.startswith(GZIP_MAGIC):
        return raw
    data = _gunzip(path, raw)
    if not data:
        raise bad_file(path, "the file is empty once decompressed", "fetch it again")
    return data


def _gunzip(path: Path, raw: bytes) -> bytes:
    """Decompress chunk by chunk, stopping as soon as the output passes the cap."""
    limit, total, chunks = max_data(), 0, []
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while chunk := stream.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise over_limit(path, "the gzip data decompresses to more bytes")
                chunks.append(chunk)
    except EOFError:
        raise bad_file(
            path,
            f"the gzip stream is truncated (it ends after {len(raw):,} bytes)",
            "the download or copy stopped early: delete the file and fetch it again",
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise bad_file(
            path, f"the gzip data is corrupt ({exc})", "delete the file and fetch it again"
        ) from None
    return b"".join(chunks)
