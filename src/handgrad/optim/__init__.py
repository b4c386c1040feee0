"""Optimizers (each checked step by step against ``torch.optim``) and learning-rate schedules."""

from handgrad.optim.optimizers import SGD, Adam, AdamW, Optimizer
from handgrad.optim.schedules import Constant, CosineWarmup, OneCycle, StepDecay, make_schedule

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "CosineWarmup",
    "OneCycle",
    "Optimizer",
    "StepDecay",
    "make_schedule",
]
