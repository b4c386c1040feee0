"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import check, data, demo, evaluate, lr_find, predict, report, train

COMMANDS = [check, demo, data, train, evaluate, predict, lr_find, report]
