"""Callbacks for :class:`~handgrad.train.learner.Learner`, one concern per module.

Default orders (lower runs first), chosen so that each callback sees what it needs::

    -20 ValidLoss       swaps in the validation loss                      (valid_loss)
    -10 LRScheduler     sets opt.lr before the batch                      (schedule)
     -5 Augment         transforms the training batch                     (augment)
     10 Metrics         accumulates loss/metrics, computes them per pass  (reporting)
     20 Recorder        writes the epoch's history row (reads Metrics)    (reporting)
     22 CSVLogger       appends the epoch's row to a CSV file (TensorBoardLogger: 23) (loggers)
     25 EarlyStopping   decides (reads Metrics); stops before next epoch  (guards)
     40 Checkpointer    saves last/best (after EarlyStopping: its state is in the file)
     50 ProgressPrinter plain epoch lines (reporting); the CLI's rich bar: handgrad.app.progress
    100 NonFiniteGuard  checks loss and gradients after every other after_backward (guards)

Metrics, Recorder and ProgressPrinter are the learner's defaults (:mod:`handgrad.train.reporting`,
re-exported here). ``CSVLogger`` and ``TensorBoardLogger`` (loggers) write each epoch's row.
``LRFinder`` and ``lr_find`` (lr_finder) run the learning-rate range test. Stateful callbacks
(Recorder, EarlyStopping, Checkpointer) have ``state_dict()`` and ``load_state_dict()`` so that
a resumed run continues exactly where it stopped.
"""

from handgrad.train.callbacks.augment import Augment
from handgrad.train.callbacks.checkpointer import Checkpointer
from handgrad.train.callbacks.guards import EarlyStopping, NonFiniteError, NonFiniteGuard
from handgrad.train.callbacks.loggers import CSVLogger, TensorBoardLogger, make_loggers
from handgrad.train.callbacks.lr_finder import LRFinder, lr_find
from handgrad.train.callbacks.schedule import LRScheduler
from handgrad.train.callbacks.valid_loss import ValidLoss
from handgrad.train.reporting import Metrics, ProgressPrinter, Recorder

__all__ = [
    "Augment",
    "CSVLogger",
    "Checkpointer",
    "EarlyStopping",
    "LRFinder",
    "LRScheduler",
    "Metrics",
    "NonFiniteError",
    "NonFiniteGuard",
    "ProgressPrinter",
    "Recorder",
    "TensorBoardLogger",
    "ValidLoss",
    "lr_find",
    "make_loggers",
]
