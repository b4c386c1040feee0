"""Training: the ``Learner`` and its callbacks, checkpoints, metrics, activation and gradient
statistics, the training recipes, devices and inference from a checkpoint."""
