"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import check, demo, evaluate, lr_find, predict, train

COMMANDS = [check, demo, train, evaluate, predict, lr_find]
