"""Learning-rate schedules, the optimizer and seeding."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from transfer.training.config import TrainConfig


def lr_factor(schedule: str, progress: float, warmup_fraction: float = 0.1) -> float:
    """Multiplier of the base learning rate after ``progress`` (0..1) of all training.

    ``onecycle``: from 1/25 up to 1 over the first quarter, then a cosine down to 1/10,000
    (fastai's recipe). ``cosine``: linear warm-up over ``warmup_fraction``, then a cosine to 0.
    ``constant``: 1 after the same warm-up.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":
        peak = 0.25
        if progress < peak:
            return _cosine_between(1 / 25, 1.0, progress / peak)
        return _cosine_between(1.0, 1e-4, (progress - peak) / (1 - peak))
    if warmup_fraction > 0 and progress < warmup_fraction:
        return 0.01 + 0.99 * progress / warmup_fraction
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup_fraction) / max(1e-9, 1 - warmup_fraction)
    return _cosine_between(1.0, 0.0, rest)


def _cosine_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    for group in groups:
        group["base_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Every group at ``factor`` times its own base rate; returns the first group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
