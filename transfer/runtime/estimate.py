"""Before training: which method suits a data set, and roughly how long training will take.

The time estimate comes from a quick measurement, not a table: a few forward passes of the
chosen backbone on this machine, scaled by the number of pictures and epochs. The measurement
runs as a job (``"job": "estimate"``) in a worker process, never in the web server, once per
backbone, image size and device: its result is kept under ``$TRANSFER_HOME/cache/estimates``.
This module imports torch only inside the measurement, so pages may import it.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass

from transfer.core import paths
from transfer.core.runs import ACTIVE_STATES, FAILED, RunDir, list_runs
from transfer.core.files import atomic_write_json, file_lock, read_json

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


def measure_forward_seconds(model, image_size: int, batch: int = 8, repeats: int = 2) -> float:
    """Seconds per picture for a forward pass of ``model`` (a torch module) on this machine's CPU."""
    import torch

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
    from transfer.models.catalogue import get_method

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


# --------------------------------------------------------------------------- measured once, kept

# A failed measurement is retried after this long (a backbone that cannot load stays failed
# for a while rather than starting a worker on every page view).
RETRY_FAILED_SECONDS = 600.0
_KEPT_JOBS = 20


def _measurement_path(backbone: str, image_size: int):
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", backbone)[:150]
    return paths.cache_dir("estimates") / f"{safe}-{int(image_size)}.json"


def stored_forward_seconds(backbone: str, image_size: int) -> float | None:
    """The kept measurement for ``backbone`` at ``image_size`` on this machine, if any."""
    stored = read_json(_measurement_path(backbone, image_size))
    if isinstance(stored, dict) and isinstance(stored.get("seconds_per_image"), (int, float)):
        return float(stored["seconds_per_image"])
    return None


def measurement_jobs_dir():
    return paths.cache_dir("estimates") / "jobs"


def request_measurement(backbone: str, image_size: int) -> RunDir:
    """The job measuring ``backbone`` at ``image_size``: one already queued or running (or one
    that failed a short while ago), else a new one. Any number of pages may ask at once."""
    from transfer.runtime.jobs import JobManager

    folder = measurement_jobs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"job": "estimate", "backbone": backbone, "image_size": int(image_size)}
    with file_lock(folder / ".request.lock"):
        runs = list_runs(folder)
        for run in runs:
            if all(run.config.get(k) == v for k, v in wanted.items()) and _still_relevant(run.status()):
                return run
        _forget_old_jobs(runs)
        return JobManager(folder, max_queued=_KEPT_JOBS).submit(wanted)


def _still_relevant(status: dict) -> bool:
    if status["state"] in ACTIVE_STATES:
        return True
    return status["state"] == FAILED and time.time() - (status.get("ended_at") or 0) < RETRY_FAILED_SECONDS


def _forget_old_jobs(runs: list[RunDir]) -> None:
    ended = [run for run in runs if run.state not in ACTIVE_STATES]
    for run in ended[_KEPT_JOBS:]:  # newest first: keep the latest few for post-mortems
        shutil.rmtree(run.path, ignore_errors=True)


def measurement_job(run: RunDir) -> None:
    """The worker's side of :func:`request_measurement`: measure, then keep the result."""
    from transfer.models.backbones import load_backbone
    from transfer.core.devices import use_all_cores

    config = run.config
    backbone, image_size = str(config["backbone"]), int(config["image_size"])
    threads = use_all_cores()
    seconds = measure_forward_seconds(load_backbone(backbone, pretrained=False), image_size)
    atomic_write_json(_measurement_path(backbone, image_size),
                      {"backbone": backbone, "image_size": image_size, "seconds_per_image": seconds,
                       "threads": threads, "measured_at": time.time()})
    run.update_status(message=f"{seconds * 1000:.0f} ms per picture.")
