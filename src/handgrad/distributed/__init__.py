"""Data-parallel training over ``torch.distributed``. ``run(train_fn, nproc=2)`` is the entry
point; give each rank its shard with ``handgrad.data.DataLoader(rank=, world_size=)``.

    context.py        DistContext: one rank's view and collectives; joining a process group
    launch.py         run, spawn: starting the ranks, failures, exit statuses
    inherit.py        what a spawned rank gets from its launcher: stdio, a lifeline
    data_parallel.py  DataParallel (averaged gradients) and its Learner callbacks
"""

from handgrad.distributed.context import (
    DistContext,
    DistributedError,
    init_from_env,
    launched_by_torchrun,
    shutdown,
)
from handgrad.distributed.data_parallel import (
    AverageTrainMetrics,
    DataParallel,
    DataParallelCallback,
)
from handgrad.distributed.launch import run, spawn

__all__ = [
    "AverageTrainMetrics",
    "DataParallel",
    "DataParallelCallback",
    "DistContext",
    "DistributedError",
    "init_from_env",
    "launched_by_torchrun",
    "run",
    "shutdown",
    "spawn",
]
