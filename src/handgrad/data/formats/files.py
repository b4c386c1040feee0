"""Reading a data file's bytes: gzip detected by content, truncation and emptiness reported.

Every error is a one-line :class:`~handgrad.errors.HandgradError` of the form
``<file>: <problem>; <fix>``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from handgrad.errors import HandgradError

GZIP_MAGIC = b"\x1f\x8b"


def bad_file(path: Path | str, problem: str, fix: str) -> HandgradError:
    """The one error shape of this package: the file, what is wrong with it, what to do."""
    return HandgradError(f"{path}: {problem}; {fix}")


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic number.

    A gzip stream that stops early (an interrupted download or copy) is reported as truncated,
    a damaged one as corrupt, an empty file as empty.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise bad_file(path, "no such file", "check the path") from None
    except IsADirectoryError:
        raise bad_file(path, "is a folder, not a file", "give the file inside it") from None
    except OSError as exc:
        raise bad_file(path, f"cannot be read ({exc.strerror})", "check its permissions") from exc
    if not raw:
        raise bad_file(path, "the file is empty (0 bytes)", "copy or download it again")
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        data = gzip.decompress(raw)
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
    if not data:
        raise bad_file(path, "the file is empty once decompressed", "fetch it again")
    return data
