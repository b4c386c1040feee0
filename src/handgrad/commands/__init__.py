"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import check, demo, report

COMMANDS = [check, demo, report]
