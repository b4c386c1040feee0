"""Gradient checking: every hand-written gradient against autograd and finite differences.

``gradcheck(layer, *inputs)`` checks a handgrad :class:`~handgrad.Module` or any object with
the lesson's protocol; ``handgrad check`` is its command line. The algorithm is described in
:mod:`.core` (the driver: hand-written runs, autograd); the protocols and the search for a
layer's tensors are in :mod:`.subject`, finite differences in :mod:`.numeric`, one tensor's
verdict in :mod:`.compare`, the known causes of a failure in :mod:`.diagnose`, running the
user's code without a traceback in :mod:`.usercode`.
"""

from handgrad.check.core import Reference, gradcheck
from handgrad.check.report import CANNOT_CHECK, OK, WRONG, CheckReport, TensorCheck

__all__ = ["CANNOT_CHECK", "OK", "WRONG", "CheckReport", "Reference", "TensorCheck", "gradcheck"]
