"""Fixtures, and markers given by folder: ``-m "not slow"``, ``-m "not distributed"``, ... select
parts of the suite; ``make test`` runs it all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
# Markers by where a test lives (a file's own marks add to these).
_FOLDER_MARKS = {"distributed": "distributed", "fast": "compiled", "app": "cli"}
_FILE_MARKS = {
    "test_rowcopy.py": "compiled",
    "test_gradcheck_mutants.py": "slow",
    "test_outsiders.py": "slow",
    "test_data_cli.py": "cli",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        folder = path.parent.name if path.parent != HERE else ""
        for name in {_FOLDER_MARKS.get(folder), _FILE_MARKS.get(path.name)} - {None}:
            item.add_marker(getattr(pytest.mark, name))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
