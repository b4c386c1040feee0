"""``handgrad.torch``: the PyTorch bridge under the name users look for.

Everything lives in :mod:`handgrad.bridge` (read its docstring for why a submodule named
``torch`` is safe here); this module only re-exports it.
"""

from .bridge import (
    CONVERSIONS,
    Conversion,
    HandgradFunction,
    TorchModule,
    as_function,
    from_torch,
    functional_call,
    register,
    to_torch,
)

__all__ = [
    "CONVERSIONS",
    "Conversion",
    "HandgradFunction",
    "TorchModule",
    "as_function",
    "from_torch",
    "functional_call",
    "register",
    "to_torch",
]
