"""The tests' demo job, added to the worker through ``$TRANSFER_EXTRA_JOBS`` (see
``transfer.runtime.extra_jobs``; conftest sets it): pretend training that writes the same kinds of
events, status and checkpoint as training does, so the job-manager tests exercise queueing,
cancelling, killing and resuming in seconds, without torch. ``demo_ranks`` is its per-rank
module for distributed launches."""

from __future__ import annotations

import os
import time

from transfer.runtime.local_queue import WORKER_THREADS_ENV
from transfer.core.runs import Cancelled, RunDir
from transfer.core.files import atomic_write_json, read_json


def demo_job(run: RunDir) -> None:
    """``epochs`` epochs of ``steps_per_epoch`` sleeps (``epoch_seconds`` per epoch). Like real
    training it checks the cancel flag every step, writes step and epoch events, saves a
    checkpoint (JSON here) of each finished epoch, updates the status, and resumes after the
    checkpoint's epoch. ``fail_at_epoch`` raises an error at the end of that epoch."""
    config = run.config
    epochs = int(config.get("epochs", 3))
    steps = int(config.get("steps_per_epoch", 5))
    step_seconds = float(config.get("epoch_seconds", 0.5)) / steps
    checkpoint_path = run.path / "demo_checkpoint.json"
    checkpoint = read_json(checkpoint_path, default={}) or {}
    done = int(checkpoint.get("epoch", 0))
    best = checkpoint.get("best_val_accuracy")
    run.append_event({"type": "info", "message": f"Demo job starting at epoch {done + 1}.", "start_epoch": done + 1,
                      "nice": os.getpriority(os.PRIO_PROCESS, 0), "threads": os.environ.get(WORKER_THREADS_ENV)})
    run.update_status(epochs=epochs)
    for epoch in range(done + 1, epochs + 1):
        for step in range(1, steps + 1):
            if run.cancel_requested():
                raise Cancelled()
            time.sleep(step_seconds)
            run.append_event({"type": "step", "epoch": epoch, "step": step, "steps": steps,
                              "loss": round(1.0 / (epoch * steps + step), 5)})
        if config.get("fail_at_epoch") == epoch:
            raise RuntimeError(f"demo failure at epoch {epoch}")
        accuracy = round(1.0 - 1.0 / (epoch + 1), 4)
        best = accuracy if best is None else max(best, accuracy)
        # Event first, then checkpoint, then status: a kill in between repeats the epoch on
        # resume (RunDir.epoch_history keeps the later copy) but never loses a finished one.
        run.append_event({"type": "epoch", "epoch": epoch, "epochs": epochs, "val_accuracy": accuracy})
        atomic_write_json(checkpoint_path, {"epoch": epoch, "best_val_accuracy": best})
        run.update_status(epoch=epoch, val_accuracy=accuracy, best_val_accuracy=best,
                          message=f"Epoch {epoch} of {epochs} done.")


JOBS = {"demo": demo_job}
RANK_MODULES = {"demo": "demo_ranks"}
