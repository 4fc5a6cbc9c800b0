"""Before training: which method suits a data set, and roughly how long training will take.

The time estimate comes from a quick measurement, not a table: a few forward (and, for the
methods that train the backbone, backward) passes of the chosen backbone on this machine,
scaled by the number of pictures and epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from transfer.methods import get_method

# Start-up of the worker process (imports, model build) and decoding each picture once.
_STARTUP_SECONDS = 4.0
_DECODE_SECONDS_PER_IMAGE = 0.006
# A training step (forward + backward + optimizer) costs about three forward passes.
_TRAIN_STEP_COST = 3.0


@dataclass(frozen=True)
class Recommendation:
    method: str
    reason: str


def recommend_method(train_images: int, num_classes: int, has_gpu: bool) -> Recommendation:
    """A sensible first method for a data set of this size on this hardware."""
    per_class = train_images / max(1, num_classes)
    if per_class < 100 or not has_gpu and train_images < 5000:
        reason = (f"with {per_class:.0f} pictures per class" if per_class < 100 else "without a GPU") + \
            ", feature transfer gives a strong result in seconds; try fine-tuning afterwards to compare."
        return Recommendation("features", reason[0].upper() + reason[1:])
    return Recommendation(
        "finetune",
        f"With {per_class:.0f} pictures per class and a GPU, fine-tuning usually beats frozen features.",
    )


@dataclass(frozen=True)
class Estimate:
    seconds: float
    seconds_per_image_forward: float
    detail: str


def measure_forward_seconds(model: torch.nn.Module, image_size: int, batch: int = 8, repeats: int = 2) -> float:
    """Seconds per picture for a forward pass of ``model`` on this machine's CPU."""
    model.eval()
    images = torch.randn(batch, 3, image_size, image_size)
    with torch.inference_mode():
        model(images[:2])  # the first call pays for one-off allocations
        started = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return (time.perf_counter() - started) / (repeats * batch)


def estimate_training_seconds(method: str, *, train_images: int, val_images: int, epochs: int,
                              forward_seconds: float, feature_views: int = 1,
                              features_cached: bool = False) -> Estimate:
    """Expected wall time of a run, from the measured seconds per forward pass."""
    method_info = get_method(method)
    decode = (train_images + val_images) * _DECODE_SECONDS_PER_IMAGE
    if method_info.caches_features:
        passes = 0 if features_cached else train_images * feature_views + val_images
        compute = passes * forward_seconds + epochs * 0.02  # the head alone is almost free
        detail = f"{passes} backbone passes once, then {epochs} epochs of the head alone"
    else:
        per_epoch = (train_images * _TRAIN_STEP_COST + val_images) * forward_seconds
        compute = epochs * per_epoch
        detail = f"{epochs} epochs of about {per_epoch:.0f} s"
    seconds = _STARTUP_SECONDS + decode + compute
    return Estimate(seconds, forward_seconds, detail)


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} seconds"
    if seconds < 3600:
        return f"about {seconds / 60:.0f} minutes"
    return f"about {seconds / 3600:.1f} hours"
