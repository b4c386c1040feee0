"""Datasets and loading: files -> :class:`Dataset` -> :class:`DataLoader` -> training.

``load_dataset("mnist-sample")`` gives the embedded 5,000 MNIST digits (needs the ``data``
extra), ``load_dataset("mnist")`` / ``("fashion-mnist")`` find or download the full sets, and
``load_dataset(path)`` reads the lesson's ``mnist.pkl.gz``, IDX files, an ``.npz`` or a folder
of them. Every file is validated; pickles can only rebuild numpy arrays.
"""

from handgrad.data.dataset import DIGITS, FASHION, Dataset, Split, pixel_stats
from handgrad.data.loader import DataLoader
from handgrad.data.sources.registry import NAMES, data_root, load_dataset

__all__ = [
    "DIGITS",
    "FASHION",
    "NAMES",
    "DataLoader",
    "Dataset",
    "Split",
    "data_root",
    "load_dataset",
    "pixel_stats",
]
