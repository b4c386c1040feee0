"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.cli`)."""

from . import bench, check, data, demo

COMMANDS = [check, demo, data, bench]
