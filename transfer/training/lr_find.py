"""The learning-rate range test (as fastai's ``lr_find``): which learning rate to train with.

The model takes one optimizer step per batch while the learning rate grows exponentially
from tiny to huge; the loss first barely moves, then falls, then explodes. A good rate lies
where the loss falls fastest, before its minimum. :func:`lr_range_test` runs the test on any
``step(lr) -> loss`` function; :func:`find_learning_rate` runs it for a training config on a
throwaway copy of the run's model (for feature transfer, on cached features, in a second;
the features it computes stay in the cache for the real run).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable

from transfer.core.errors import TransferError


class LRFindError(TransferError):
    """The range test could not suggest a rate."""


@dataclass
class LRFindResult:
    suggestion: float  # steepest fall of the smoothed loss before its minimum
    min_loss_lr: float  # where the smoothed loss was lowest
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def lr_range_test(step: Callable[[float], float], *, start_lr: float = 1e-7, end_lr: float = 10.0,
                  num_steps: int = 100, smoothing: float = 0.98, diverge_factor: float = 4.0) -> LRFindResult:
    """Call ``step(lr)`` with exponentially growing rates until the loss diverges."""
    if not 0 < start_lr < end_lr or num_steps < 5:
        raise LRFindError("The range test needs 0 < start rate < end rate and at least 5 steps.")
    lrs, losses, raw = [], [], []
    average, lowest = 0.0, math.inf
    for index in range(num_steps):
        lr = start_lr * (end_lr / start_lr) ** (index / (num_steps - 1))
        loss = float(step(lr))
        if not math.isfinite(loss):
            break
        average = smoothing * average + (1 - smoothing) * loss
        smoothed = average / (1 - smoothing ** (index + 1))  # bias correction for the first steps
        lrs.append(lr)
        losses.append(smoothed)
        raw.append(loss)
        if index > 5 and smoothed > diverge_factor * lowest:
            break
        lowest = min(lowest, smoothed)
    if len(lrs) < 5:
        raise LRFindError("The loss diverged at once; the model or data may be broken.")
    return LRFindResult(suggest_lr(lrs, losses), lrs[losses.index(min(losses))], lrs, losses, raw)


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The rate where the smoothed loss falls fastest (per factor of learning rate), looking only
    before the minimum; falls back to a tenth of the minimum's rate when the curve is flat, never
    below the lowest rate tried (nothing is known about rates the test did not reach)."""
    low = losses.index(min(losses))
    best_slope, best_index = 0.0, None
    for i in range(1, low + 1):
        slope = (losses[i] - losses[i - 1]) / (math.log(lrs[i]) - math.log(lrs[i - 1]))
        if slope < best_slope:
            best_slope, best_index = slope, i
    if best_index is None:
        return max(lrs[0], lrs[low] / 10)
    return lrs[best_index]


def find_learning_rate(config, *, num_steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0) -> LRFindResult:
    """Run the range test for ``config`` (a :class:`transfer.training.config.TrainConfig`) without
    touching any real run; the data set and feature caches it fills are reused later."""
    import torch

    from transfer.core.runs import RunDir
    from transfer.training.loop import Trainer
    from transfer.training.schedule import seed_everything
    from transfer.training.steps import train_step

    with tempfile.TemporaryDirectory(prefix="transfer-lr-find-") as scratch:
        run = RunDir.create(scratch, config.to_dict())
        trainer = Trainer(run, config)
        trainer.prepare()
        trainer.task.train_mode(1)
        generator = seed_everything(config.seed)
        n = len(trainer.data.train_samples)
        batch = min(trainer.batch_size, n)
        order: list[int] = []
        multipliers = [group["base_lr"] / config.lr for group in trainer.optimizer.param_groups]

        def step(lr: float) -> float:
            nonlocal order
            if len(order) < batch:
                order = torch.randperm(n, generator=generator).tolist()
            indices, order = torch.tensor(order[:batch]), order[batch:]
            for group, multiplier in zip(trainer.optimizer.param_groups, multipliers):
                group["lr"] = lr * multiplier
            return float(train_step(trainer.parts, indices, 1)[0])  # an infinite loss ends the test

        return lr_range_test(step, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps)


RESULT_FILE = "result.json"


def lr_find_job(run) -> None:
    """The worker's side of the Configure page's finder: ``run.config`` holds ``train`` (a
    training config as a dict) and ``steps``; the result lands in the run's ``result.json``."""
    from transfer.training.config import TrainConfig
    from transfer.core.files import atomic_write_json

    config = TrainConfig.from_saved(run.config["train"])
    result = find_learning_rate(config, num_steps=int(run.config.get("steps", 100)))
    atomic_write_json(run.path / RESULT_FILE, {**result.to_dict(), "method": config.method,
                                               "backbone": config.backbone})
    run.update_status(message=f"Suggested learning rate {result.suggestion:.1e}.")
