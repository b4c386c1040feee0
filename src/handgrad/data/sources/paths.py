"""A dataset from a path: one file (``.pkl[.gz]``, ``.npz``, an IDX file) or a folder of them.

A folder is searched, in this order, for a set of IDX files (``train-images-idx3-ubyte[.gz]``
and its siblings), a pickle (``mnist.pkl.gz`` first) and an ``.npz`` (``mnist.npz`` first);
torchvision's ``MNIST/raw`` and ``FashionMNIST/raw`` sub-folders are searched too.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from handgrad.data.dataset import (
    Dataset,
    Split,
    carve_valid,
    class_names_for,
    make_dataset,
    to_split,
)
from handgrad.data.formats.files import bad_file, folder_errors, path_status, refuse_special
from handgrad.data.formats.idx import FILE_NAME, find_idx_files, read_idx_pair
from handgrad.data.formats.npz import npz_arrays
from handgrad.data.formats.pickles import lesson_parts
from handgrad.errors import HandgradError

SUBFOLDERS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")
PICKLE_SUFFIXES = (".pkl.gz", ".pkl", ".pickle")
CARVED = "valid = the last 1/6 of the file's training rows (train keeps the rest, in order)"


def load_path(path: Path, name: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Load the dataset at ``path`` (a file or a folder); ``name`` and ``classes`` default to
    the file's name and to digit names (Fashion-MNIST's if ``fashion`` is in the path)."""
    path = Path(path).expanduser()
    mode = path_status(
        path,
        missing="no such file or folder",
        fix="give a dataset name (mnist-sample, mnist, fashion-mnist) or the path of an "
        ".pkl.gz, .npz, IDX file or a folder of them",
    ).st_mode
    refuse_special(path, mode)
    classes = classes or class_names_for(str(path.resolve()))
    name = name or path.name
    if stat.S_ISDIR(mode):
        return _load_folder(path, name, classes)
    if FILE_NAME.match(path.name):
        return _load_idx_folder(path.parent, name, classes)
    lower = path.name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return _load_pickle(path, name, classes)
    if lower.endswith((".npz", ".npz.gz")):
        return _load_npz(path, name, classes)
    raise bad_file(
        path,
        "unknown format",
        "give a .pkl.gz (the lesson's), an .npz (x_train, y_train, x_test, y_test), IDX "
        "files named like train-images-idx3-ubyte[.gz], or a folder of them",
    )


def find_in_folder(folder: Path) -> Path | None:
    """The data file or IDX folder that :func:`load_path` would use in ``folder``, if any."""
    with folder_errors(folder):
        return _search(folder)


def _search(folder: Path) -> Path | None:
    for sub in SUBFOLDERS:
        d = folder / sub if sub else folder
        if not d.is_dir():
            continue
        if find_idx_files(d):
            return d
        files = sorted(p for p in d.iterdir() if p.is_file())
        for suffixes, preferred in ((PICKLE_SUFFIXES, "mnist.pkl.gz"), ((".npz",), "mnist.npz")):
            matches = [p for p in files if p.name.lower().endswith(suffixes)]
            matches.sort(key=lambda p: p.name != preferred)
            if matches:
                return matches[0]
    return None


def _load_folder(folder: Path, name: str, classes: list[str]) -> Dataset:
    found = find_in_folder(folder)
    if found is None:
        raise HandgradError(
            f"{folder}: no dataset files in this folder; expected IDX files "
            "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...), a .pkl.gz "
            "or an .npz"
        )
    if found.is_dir():
        return _load_idx_folder(found, name, classes)
    return load_path(found, name, classes)


def _load_idx_folder(folder: Path, name: str, classes: list[str]) -> Dataset:
    files = find_idx_files(folder)
    for split in ("train", "t10k"):
        have = [kind for kind in ("images", "labels") if (split, kind) in files]
        if len(have) == 1:
            missing = "labels-idx1" if have == ["images"] else "images-idx3"
            raise HandgradError(
                f"{folder}: found {files[(split, have[0])].name} but no "
                f"{split}-{missing}-ubyte[.gz] beside it; put both files of the pair there"
            )
    if ("train", "images") not in files:
        raise HandgradError(
            f"{folder}: the t10k (test) IDX files are here but not train-images-idx3-ubyte"
            "[.gz] and train-labels-idx1-ubyte[.gz]; add the training pair"
        )
    parts: dict[str, tuple[Split, tuple[int, int, int]]] = {}
    images, labels = files[("train", "images")], files[("train", "labels")]
    train, shape = to_split(
        *read_idx_pair(images, labels),
        where=str(images),
        n_classes=len(classes),
        labels_where=str(labels),
    )
    tr, va = carve_valid(train, str(images))
    parts["train"], parts["valid"] = (tr, shape), (va, shape)
    if ("t10k", "images") in files:
        images, labels = files[("t10k", "images")], files[("t10k", "labels")]
        parts["test"] = to_split(
            *read_idx_pair(images, labels),
            where=str(images),
            n_classes=len(classes),
            labels_where=str(labels),
        )
    note = f"IDX train/t10k files; {CARVED}; test = t10k" if "test" in parts else CARVED
    return make_dataset(name, parts, classes=classes, source=str(folder), split_note=note)


def _load_pickle(path: Path, name: str, classes: list[str]) -> Dataset:
    parts = {
        split: to_split(x, y, where=f"{path} ({split} split)", n_classes=len(classes))
        for split, x, y in lesson_parts(path)
    }
    note = "the file's own train/valid" + ("/test" if "test" in parts else "") + " splits"
    return make_dataset(name, parts, classes=classes, source=str(path), split_note=note)


def _load_npz(path: Path, name: str, classes: list[str]) -> Dataset:
    arrays = npz_arrays(path)
    parts: dict[str, tuple[Split, tuple[int, int, int]]] = {}
    for split in ("train", "valid", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise bad_file(
                path,
                f"has {'x' if y is None else 'y'}_{split} without its "
                f"{'y' if y is None else 'x'}_{split}",
                "save both arrays of each split",
            )
        if x is not None and y is not None:
            parts[split] = to_split(
                np.asarray(x), np.asarray(y), where=f"{path} ({split})", n_classes=len(classes)
            )
    note = "the file's train/valid/test arrays"
    if "valid" not in parts:
        (train, shape) = parts["train"]
        tr, va = carve_valid(train, str(path))
        parts["train"], parts["valid"] = (tr, shape), (va, shape)
        note = "x_train/y_train: " + CARVED + ("; test = x_test/y_test" if "test" in parts else "")
    return make_dataset(name, parts, classes=classes, source=str(path), split_note=note)
