"""One optimizer step, the single place where a model learns from a batch.

The epoch loop, fine-tuning's linear probe, the data audit's cross-validated heads and the
learning-rate finder all call :func:`train_step`; :func:`fit_head_on_features` fits a head on
fixed features (in closed form when it is a plain linear layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transfer.training import TrainingError
from transfer.training.schedule import lr_factor, set_learning_rate
from transfer.training.tasks import FeatureTask


@dataclass
class StepParts:
    """What one optimizer step works with."""

    task: object  # a FeatureTask or an ImageTask
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    targets: torch.Tensor  # class index per training picture, on the task's device
    generator: torch.Generator  # draws the augmentation
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None  # per class, on the task's device: uneven classes weigh the same


def train_step(parts: StepParts, indices: torch.Tensor, epoch: int,
               loss_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the training pictures ``indices``; returns the batch's mean loss
    and number of hits, as tensors (reading them would force a device sync).

    The batch may go through the model in parts (``task.micro_batch``), with gradients
    added up: the same step for the optimizer, a fraction of the activation memory.
    ``loss_weight`` scales the gradients (a rank's share of a global batch).
    """
    device = parts.targets.device
    parts.optimizer.zero_grad(set_to_none=True)
    total_loss = torch.zeros((), device=device)
    hits = torch.zeros((), dtype=torch.long, device=device)
    chunks = indices.split(parts.task.micro_batch or len(indices))
    for number, part in enumerate(chunks, start=1):
        targets = parts.targets[part.to(device)]
        with parts.task.gradient_sync(number == len(chunks)):
            logits = parts.task.forward_train(part, epoch, parts.generator)
            loss = F.cross_entropy(logits.float(), targets, weight=parts.class_weights,
                                   label_smoothing=parts.label_smoothing)
            parts.scaler.scale(loss * (len(part) / len(indices) * loss_weight)).backward()
        total_loss += loss.detach() * len(part)
        hits += (logits.detach().argmax(1) == targets).sum()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return total_loss / len(indices), hits


def checked_loss(loss: float) -> float:
    if not math.isfinite(loss):
        raise TrainingError("The loss became infinite or not a number: lower the learning rate (--lr) and "
                            "train again.")
    return loss


def fit_head_on_features(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, seed: int,
                         single_thread: bool = True,
                         source: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Fit ``head`` on fixed feature vectors and return its training accuracy. Used for
    fine-tuning's linear probe and for the data audit's cross-validated heads.

    A plain linear head is fit to its optimum (:func:`transfer.training.head_fit.fit_linear_head`);
    a head with a hidden layer or dropout is trained with feature transfer's epoch settings
    (AdamW, one-cycle). ``source``, the backbone's own classifier (weight, bias), guides a linear
    fit as in a features run."""
    from transfer.models.methods import METHODS
    from transfer.training.head_fit import fit_linear_head, fits_in_closed_form

    threads = torch.get_num_threads()
    if single_thread:
        torch.set_num_threads(1)  # a head's problem is tiny: see transfer.training.loop
    try:
        if fits_in_closed_form(head):
            fit_linear_head(inputs, targets, head.out_features, seed=seed, source=source).load_into(head)
            with torch.no_grad():
                return float((head(inputs).argmax(1) == targets).float().mean())
        settings = METHODS["features"].defaults
        task = FeatureTask(head, inputs.unsqueeze(1), inputs[:0], inputs.device)
        optimizer = torch.optim.AdamW([{"params": head.parameters(), "lr": settings["lr"],
                                        "base_lr": settings["lr"]}],
                                      lr=settings["lr"], weight_decay=settings["weight_decay"])
        parts = StepParts(task, optimizer, torch.amp.GradScaler("cpu", enabled=False), targets,
                          torch.Generator().manual_seed(seed))
        epochs, batch, n = settings["epochs"], settings["batch_size"], inputs.shape[0]
        task.train_mode(1)
        for epoch in range(epochs):
            order = torch.randperm(n, generator=parts.generator).to(inputs.device)
            for start in range(0, n, batch):
                set_learning_rate(optimizer, lr_factor("onecycle", (epoch * n + start) / (epochs * n)))
                train_step(parts, order[start : start + batch], epoch + 1)
        head.eval()
        with torch.no_grad():
            return float((head(inputs).argmax(1) == targets).float().mean())
    finally:
        torch.set_num_threads(threads)
