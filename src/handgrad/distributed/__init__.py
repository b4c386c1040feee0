"""Data-parallel training over ``torch.distributed``: spawning ranks, sharding, gradient
averaging. ``handgrad.distributed.run(train_fn, nproc=2)`` is the entry point."""

from handgrad.distributed.data_parallel import (
    AverageTrainMetrics,
    DataParallel,
    DataParallelCallback,
    DistContext,
    DistributedError,
    ShardedLoader,
    init_from_env,
    launched_by_torchrun,
    run,
    shutdown,
    spawn,
)

__all__ = [
    "AverageTrainMetrics",
    "DataParallel",
    "DataParallelCallback",
    "DistContext",
    "DistributedError",
    "ShardedLoader",
    "init_from_env",
    "launched_by_torchrun",
    "run",
    "shutdown",
    "spawn",
]
