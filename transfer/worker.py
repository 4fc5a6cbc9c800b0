"""The worker process: ``python -m transfer.worker RUN_DIR`` trains one run, then exits.

Started by ``transfer.jobs.JobManager`` in a fresh interpreter. It

1. takes its run's worker lock (so no two workers ever train the same run, and any process can
   tell that this one is alive);
2. waits in the machine's queue for a training slot, keeping ``queue_position`` up to date;
3. marks the run ``running`` and calls ``transfer.train.train_run(run)``;
4. records how it ended: ``finished``, ``cancelled`` (the training code raised ``Cancelled``),
   or ``failed`` with a sentence for the user, and appends one ``end`` event.

If the process is killed, nothing is recorded; the next ``JobManager`` sees the dead worker
and marks the run ``interrupted``.

A config with ``"job": "demo"`` runs ``_demo_job`` instead of real training: a few epochs of
sleeping that write the same kinds of events, status and checkpoint as training does. The
job-manager tests use it so that they exercise queueing, cancelling, killing and resuming in
seconds, without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from transfer.errors import TransferError
from transfer.jobs import (
    QUEUE_POLL_SECONDS,
    add_queue_entry,
    default_max_parallel,
    find_queue_entry,
    free_slot_count,
    queue_entries,
    remove_queue_entry,
    try_lock,
    try_take_slot,
)
from transfer.runs import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STATES,
    Cancelled,
    RunDir,
    atomic_write_json,
    read_json,
)

DEMO_JOB = "demo"
TRAIN_JOB = "train"
# Probing processes hold a run's worker lock for an instant; a worker retries for this long.
WORKER_LOCK_WAIT_SECONDS = 10.0


class UnknownJob(TransferError):
    """The run's config names a job type this version cannot run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.worker", description="Train one run directory.")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"{run.path} is not a run folder", file=sys.stderr)
        return 2
    lock = _take_worker_lock(run)
    if lock is None:
        print(f"another worker is already looking after {run.path}; exiting", file=sys.stderr)
        return 0
    if run.transition([QUEUED], pid=os.getpid()) is None:
        print(f"run is {run.state}, not queued; nothing to do", file=sys.stderr)
        return 0

    slot = wait_for_slot(run)
    if slot is None:
        _end_cancelled_in_queue(run)
        return 0
    started = run.transition([QUEUED], state=RUNNING, pid=os.getpid(), started_at=time.time(),
                             queue_position=None, message="Training.")
    if started is None:  # cancelled between taking the slot and starting
        return 0
    print(f"{time.strftime('%H:%M:%S')} worker {os.getpid()} training {run.path}", flush=True)
    return run_job(run)


def _take_worker_lock(run: RunDir) -> int | None:
    deadline = time.monotonic() + WORKER_LOCK_WAIT_SECONDS
    while True:
        fd = try_lock(run.worker_lock_path)
        if fd is not None or time.monotonic() > deadline:
            return fd
        time.sleep(0.05)


# --------------------------------------------------------------------------- waiting in the queue


def wait_for_slot(run: RunDir, poll: float = QUEUE_POLL_SECONDS) -> int | None:
    """Wait for this run's turn and a free slot; returns the slot's lock descriptor (held until
    the process exits), or None if the run was cancelled while waiting."""
    found = find_queue_entry(run)
    if found is None:  # started by hand rather than by a JobManager
        entry_path = add_queue_entry(run, default_max_parallel())
        entry = read_json(entry_path)
    else:
        entry_path, entry = found
    max_parallel = int(entry.get("max_parallel") or 1)
    reported = None
    while True:
        if run.cancel_requested():
            remove_queue_entry(entry_path)
            return None
        position = _position_in_queue(run, entry_path, entry)
        if position <= free_slot_count(max_parallel):
            slot = try_take_slot(max_parallel)
            if slot is not None:
                remove_queue_entry(entry_path)
                return slot
        if position != reported:
            ahead = "next in line" if position == 1 else f"{position - 1} runs ahead"
            run.update_status(queue_position=position, message=f"Waiting for a free training slot ({ahead}).")
            reported = position
        time.sleep(poll)


def _position_in_queue(run: RunDir, entry_path, entry: dict) -> int:
    names = [path.name for path, _ in queue_entries()]
    if entry_path.name not in names:
        # Judged stale by another process (should not happen while we hold the worker lock):
        # put it back under its old name, which keeps its place.
        atomic_write_json(entry_path, entry)
        names = sorted([*names, entry_path.name])
    return names.index(entry_path.name) + 1


def _end_cancelled_in_queue(run: RunDir) -> None:
    message = "Cancelled before it started."
    run.transition([QUEUED], with_event={"type": "end", "state": CANCELLED, "message": message},
                   state=CANCELLED, ended_at=time.time(), queue_position=None, message=message)


# --------------------------------------------------------------------------- running the job


def run_job(run: RunDir) -> int:
    """Run the job and record how it ended; returns the process exit code."""
    try:
        job = job_function(run.config)
        job(run)
    except Cancelled:
        epoch = run.status().get("epoch") or 0
        kept = f"epoch {epoch} is kept" if epoch else "no epoch had finished"
        _finish(run, CANCELLED, f"Cancelled; {kept}.")
        return 0
    except TransferError as error:
        _finish(run, FAILED, str(error))
        return 1
    except Exception as error:  # anything else is a bug or an environment problem: keep the trace
        traceback.print_exc()
        _finish(run, FAILED, f"Training failed: {type(error).__name__}: {error}; see {run.log_path}.")
        return 1
    _finish(run, FINISHED, "Finished.")
    return 0


def job_function(config: dict):
    """The function that trains a run of this config. Imported lazily: real training pulls in
    torch, and the demo job must not."""
    job = config.get("job", TRAIN_JOB)
    if job == TRAIN_JOB:
        from transfer.train import train_run

        return train_run
    if job == DEMO_JOB:
        return _demo_job
    raise UnknownJob(f"This version of Transfer Studio cannot run jobs of type {job!r}; start a new run.")


def _finish(run: RunDir, state: str, message: str) -> None:
    status = run.status()
    if state == FINISHED and status["state"] == FINISHED and status.get("message"):
        message = status["message"]  # the training code's own closing words win
    end_event = {
        "type": "end",
        "state": state,
        "message": message,
        "epoch": status.get("epoch", 0),
        "epochs": status.get("epochs"),
        "val_accuracy": status.get("val_accuracy"),
        "best_val_accuracy": status.get("best_val_accuracy"),
    }
    # Only this worker changes a running run's state, so any current state is fine here.
    run.transition(STATES, with_event=end_event, state=state, ended_at=time.time(), queue_position=None,
                   message=message)
    print(f"{time.strftime('%H:%M:%S')} {state}: {message}", flush=True)


# --------------------------------------------------------------------------- the demo job


def _demo_job(run: RunDir) -> None:
    """Pretend training for the job-manager tests: ``epochs`` epochs of ``steps_per_epoch``
    sleeps (``epoch_seconds`` per epoch). Like real training it checks the cancel flag every
    step, writes step and epoch events, saves a checkpoint (JSON here) of each finished epoch,
    updates the status, and resumes after the checkpoint's epoch. ``fail_at_epoch`` raises
    an error at the end of that epoch."""
    config = run.config
    epochs = int(config.get("epochs", 3))
    steps = int(config.get("steps_per_epoch", 5))
    step_seconds = float(config.get("epoch_seconds", 0.5)) / steps
    checkpoint_path = run.path / "demo_checkpoint.json"
    checkpoint = read_json(checkpoint_path, default={}) or {}
    done = int(checkpoint.get("epoch", 0))
    best = checkpoint.get("best_val_accuracy")
    run.append_event({"type": "info", "message": f"Demo job starting at epoch {done + 1}.", "start_epoch": done + 1})
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


if __name__ == "__main__":
    sys.exit(main())
