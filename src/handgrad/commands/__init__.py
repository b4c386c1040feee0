"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import check, demo

COMMANDS = [check, demo]
