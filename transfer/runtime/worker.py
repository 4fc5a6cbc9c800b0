"""The worker process: ``python -m transfer.runtime.worker RUN_DIR`` trains one run, then exits.

Started by ``transfer.runtime.local_queue.dispatch`` in a fresh interpreter when the run leaves the queue,
with the run's worker lock and its training slot(s) already taken and handed over as open
descriptors (``--lock-fd``, ``--slot-fd``). It

1. lowers its CPU priority and bounds torch's threads (the web server stays responsive);
2. marks the run ``running`` and calls the job's function (``transfer.training.run.train_run`` for
   training), or, for a run on several processes, starts them through torchrun and waits for
   them (``transfer.runtime.launch``);
3. records how it ended: ``finished``, ``cancelled`` (the job raised ``Cancelled``), or
   ``failed`` with a sentence for the user, and appends one ``end`` event;
4. gives its slot back and dispatches the next waiting run, so the queue moves on even when
   no web server is running.

Started by hand (no descriptors), it takes the worker lock and waits for a free slot itself.

Started as a Ray job (``--on-cluster``, see :mod:`transfer.runtime.backends`), Ray has chosen the
node and holds the job's CPUs and GPUs: there are no slots and no queue to move. Before anything
else it checks that it can write into the run folder (which must be on storage every node mounts
at the same path); when it cannot, it prints one sentence naming the folder and the node and
exits with ``UNWRITABLE_EXIT_CODE``, and the studio fails the run with that sentence.

Every worker writes the name of its machine into the run's status (``node``) when it starts.

If the process is killed, nothing is recorded; the next ``JobManager`` sees the dead worker
and marks the run ``interrupted``.

Job types besides training: ``lr_find`` (the learning-rate range test of the Configure page)
``estimate`` (a backbone's speed on this machine, for time estimates) and ``audit`` (label audits
and feature maps). The tests add a demo
job of their own through ``transfer.runtime.extra_jobs``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from transfer.core.child import redirect_output
from transfer.core.errors import TransferError
from transfer.runtime.extra_jobs import extra_job
from transfer.runtime.backends import UNWRITABLE_EXIT_CODE, UNWRITABLE_FOLDER
from transfer.runtime.local_queue import (DEVICE_POOL, QUEUE_POLL_SECONDS, WORKER_THREADS_ENV, default_max_parallel,
    dispatch, job_place, lower_priority, note_running, slots_needed, try_take_slots, worker_threads)
from transfer.core.files import lock_with_retry
from transfer.runtime.launch import is_distributed, run_ranks
from transfer.core.runs import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STATES,
    Cancelled,
    RunDir,
)

TRAIN_JOB = "train"
LR_FIND_JOB = "lr_find"
ESTIMATE_JOB = "estimate"
AUDIT_JOB = "audit"  # label audits and feature maps of the Data and Evaluate pages
SUGGEST_JOB = "suggest"  # which pool pictures to label first (the Data page's label assist)
# Probing processes hold a run's worker lock for an instant; a worker retries for this long.
WORKER_LOCK_WAIT_SECONDS = 10.0


class UnknownJob(TransferError):
    """The run's config names a job type this version cannot run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.runtime.worker", description="Train one run directory.")
    parser.add_argument("run_dir")
    parser.add_argument("--slot-fd", type=int, action="append",
                        help="an open descriptor holding a slot (from the dispatcher); one per slot the run takes")
    parser.add_argument("--lock-fd", type=int, help="an open descriptor holding the run's worker lock")
    parser.add_argument("--on-cluster", action="store_true",
                        help="run as a Ray job: Ray chose this node and holds its resources; no queue slots")
    args = parser.parse_args(argv)
    if args.on_cluster:
        return run_on_cluster(Path(args.run_dir))

    run = RunDir(args.run_dir)
    if not run.exists():
        # Logs name a run by its id, never by its folder: the folder names the browser session.
        print(f"{run.path.name} is not a run folder", file=sys.stderr)
        return 2
    lock = args.lock_fd if args.lock_fd is not None else lock_with_retry(run.worker_lock_path, WORKER_LOCK_WAIT_SECONDS)
    if lock is None:
        print(f"another worker is already looking after run {run.path.name}; exiting", file=sys.stderr)
        return 0
    slots = args.slot_fd or []
    try:
        if run.transition([QUEUED], pid=os.getpid()) is None:
            print(f"run is {run.state}, not queued; nothing to do", file=sys.stderr)
            return 0
        if not slots:
            slots = wait_for_slots(run)
        if not slots:
            _end_cancelled_in_queue(run)
            return 0
        with _noted_running(run):
            return train_in_slot(run, (lock, *slots))
    finally:
        for slot in slots:
            os.close(slot)  # the slots are free from here on: hand them to the next waiting run
        if slots:
            dispatch()


def run_on_cluster(folder: Path) -> int:
    """Run the job of the run in ``folder`` as a Ray job; returns the exit code."""
    problem = folder_problem(folder)
    if problem is not None:
        print(problem, file=sys.stderr, flush=True)
        return UNWRITABLE_EXIT_CODE
    run = RunDir(folder)
    if not run.exists():
        print(f"{folder.name} is not a run folder", file=sys.stderr)
        return 2
    if run.transition([QUEUED], pid=os.getpid()) is None:
        print(f"run is {run.state}, not queued; nothing to do", file=sys.stderr)
        return 0
    # Ray keeps the job's output on its node; the run folder's worker.log, which every message
    # about a failed run points to, gets it as on one machine.
    print(f"The run's output continues in {run.log_path}.", flush=True)
    redirect_output(run.log_path)
    return train_in_slot(run)


def folder_problem(folder: Path) -> str | None:
    """One sentence when this node cannot write into the run folder ``folder``, else None."""
    node = socket.gethostname()
    if not folder.is_dir():
        return (f"{UNWRITABLE_FOLDER} {folder} on node {node}: it is not there; mount the run folders "
                "at the same path on every node.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return (f"{UNWRITABLE_FOLDER} {folder} on node {node} ({error.strerror or error}); mount the run "
                "folders writable, at the same path, on every node.")
    return None


@contextlib.contextmanager
def _noted_running(run: RunDir):
    """While a worker of this machine trains: the queue's note that it does (see running_runs)."""
    note = note_running(run)
    try:
        yield
    finally:
        note.unlink(missing_ok=True)


def train_in_slot(run: RunDir, held_fds: tuple[int, ...] = ()) -> int:
    """Run the job of ``run`` (this process holds its slots, and its lock, as ``held_fds``);
    returns the exit code."""
    lower_priority()
    os.environ.setdefault(WORKER_THREADS_ENV, str(worker_threads(default_max_parallel())))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read once, when torch loads
        os.environ.setdefault(name, os.environ[WORKER_THREADS_ENV])
    started = run.transition([QUEUED], state=RUNNING, pid=os.getpid(), started_at=time.time(),
                             node=socket.gethostname(), queue_position=None, waiting_for=None, message="Running.")
    if started is None:  # cancelled between leaving the queue and starting
        return 0
    print(f"{time.strftime('%H:%M:%S')} worker {os.getpid()} running run {run.path.name}", flush=True)
    if is_distributed(run.config):
        return run_distributed(run, held_fds)
    return run_job(run)


def wait_for_slots(run: RunDir, poll: float = QUEUE_POLL_SECONDS) -> list[int]:
    """For a worker started by hand: wait until the slots the run needs are free; returns their
    lock descriptors, or none if the run was cancelled while waiting."""
    pool, _ = job_place(run.config)
    size = default_max_parallel() if pool == DEVICE_POOL else 1
    while not run.cancel_requested():
        slots = try_take_slots(slots_needed(run.config, size), size, pool)
        if slots:
            return slots
        time.sleep(poll)
    return []


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


def run_distributed(run: RunDir, held_fds: tuple[int, ...]) -> int:
    """Train on several processes through torchrun (``transfer.runtime.launch``) and record how it ended."""
    try:
        state, message = run_ranks(run, held_fds, int(os.environ[WORKER_THREADS_ENV]))
    except OSError as error:  # torchrun could not start at all
        state, message = FAILED, f"Could not start the training processes ({error}); check that torch is installed."
    _finish(run, state, message)
    return 0 if state in (FINISHED, CANCELLED) else 1


def job_function(config: dict):
    """The function that trains a run of this config. Imported lazily: real training pulls in
    torch, and the tests' demo job must not."""
    job = config.get("job", TRAIN_JOB)
    if job == TRAIN_JOB:
        from transfer.training.run import train_run

        return train_run
    if job == LR_FIND_JOB:
        from transfer.training.lr_find import lr_find_job

        return lr_find_job
    if job == ESTIMATE_JOB:
        from transfer.runtime.estimate import measurement_job

        return measurement_job
    if job == AUDIT_JOB:
        from transfer.analysis.audit import audit_job

        return audit_job
    if job == SUGGEST_JOB:
        from transfer.analysis.suggest import suggest_job

        return suggest_job
    added = extra_job(job)
    if added is not None:
        return added
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


if __name__ == "__main__":
    sys.exit(main())
