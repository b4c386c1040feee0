"""Old import paths of the modules users are likely to have in code, kept working after the
move to the layered layout (see the changelog in README.md). Importing one gives the new
module, with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

OLD_PATHS = {
    "handgrad.module": "handgrad.nn.module",
    "handgrad.functional": "handgrad.nn.functional",
    "handgrad.layers": "handgrad.nn.layers",
    "handgrad.losses": "handgrad.nn.layers.losses",
    "handgrad.init": "handgrad.nn.init",
    "handgrad.models": "handgrad.nn.models",
    "handgrad.lesson": "handgrad.nn.lesson",
    "handgrad.schedules": "handgrad.optim.schedules",
    "handgrad.gradcheck": "handgrad.check",
    "handgrad.learner": "handgrad.train.learner",
    "handgrad.callbacks": "handgrad.train.callbacks",
    "handgrad.checkpoint": "handgrad.train.checkpoint",
    "handgrad.metrics": "handgrad.train.metrics",
    "handgrad.stats": "handgrad.train.stats",
    "handgrad.devices": "handgrad.train.devices",
    "handgrad.bridge": "handgrad.interop.torch",
    "handgrad.torch": "handgrad.interop.torch",
    "handgrad.plots": "handgrad.app.plots",
    "handgrad.plots.stats": "handgrad.app.plots.stats",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in OLD_PATHS:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = OLD_PATHS[spec.name]
        warnings.warn(
            f"{spec.name} is now {new}: import it from there", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
