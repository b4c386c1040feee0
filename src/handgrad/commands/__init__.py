"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import check, data, demo

COMMANDS = [check, demo, data]
