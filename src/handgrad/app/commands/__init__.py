"""Sub-commands of the ``handgrad`` CLI, one module each (see :mod:`handgrad.app.cli`)."""

from handgrad.app.commands import (
    bench,
    check,
    data,
    demo,
    evaluate,
    lr_find,
    predict,
    report,
    runs,
    serve,
    train,
)

COMMANDS = [check, demo, data, train, evaluate, predict, lr_find, report, runs, bench, serve]
