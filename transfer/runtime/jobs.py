"""Jobs: the studio's training runs (and its other heavy work, see
:mod:`transfer.runtime.side_jobs`), started, watched, cancelled and resumed through one
:class:`JobManager` per runs folder.

Who runs them is the back end's business (:mod:`transfer.runtime.backends`): this machine's
queue (:mod:`transfer.runtime.local_queue`: file entries, ``flock`` slots, a dispatcher, workers),
or, with ``TRANSFER_RAY_ADDRESS`` set, a Ray cluster that takes every job as a Ray job. Pages, side
jobs and the command line only talk to the manager, so they do not know which one runs their
jobs. The back end is looked up on every call, so changing the setting needs no restart.

Whoever looks moves the queue: :meth:`JobManager.status` now and then marks a run whose worker
(or Ray job) is gone and lets a queued run look for a free slot, so a page that shows a run never
moves the queue itself. A run is ``interrupted`` (resumable) when nothing looks after it any
more; a cancel that a running run has not answered after ``CANCEL_ANSWER_SECONDS`` is enforced by
the back end (on a cluster: Ray's ``stop_job``).

The queue's names (``dispatch``, ``queue_dir``, ``worker_alive``, ...) are importable from here
too, as they always were.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transfer.core.errors import TransferError
from transfer.core.files import file_lock
from transfer.core.runs import (ACTIVE_STATES, CANCELLED, ENDED_STATES, FAILED, FINISHED, INTERRUPTED,
    QUEUED, RESUMABLE_STATES, RUNNING, RunDir, RunStateError, find_run, list_runs)
from transfer.runtime.backends import CANCEL_ANSWER_SECONDS, job_backend
from transfer.runtime.local_queue import check_max_parallel, default_max_parallel, positive_whole_number

MAX_QUEUED_ENV = "TRANSFER_MAX_QUEUED"
DEFAULT_MAX_QUEUED = 4


class SessionQueueFull(TransferError):
    """The runs folder (a browser session) already has its limit of queued and running runs."""


def default_max_queued() -> int:
    """Queued plus running runs one runs folder (a browser session) may have:
    ``$TRANSFER_MAX_QUEUED``, else 4."""
    raw = os.environ.get(MAX_QUEUED_ENV, "").strip()
    return _check_max_queued(raw) if raw else DEFAULT_MAX_QUEUED


def _check_max_queued(value) -> int:
    return positive_whole_number(
        value, f"The number of queued runs per session must be a whole number of at least 1, not {value!r}; "
               f"fix {MAX_QUEUED_ENV} or the setting.")


# --------------------------------------------------------------------------- the manager


RUN_ROOM_BYTES = 300 * 10**6  # a ResNet-50 run's weights, checkpoint (with optimizer state) and outputs
QUEUE_CHECK_SECONDS = 5.0  # how often asking for a run's status also moves the queue
_queue_checked_at: dict[str, float] = {}  # run folder -> when its status last moved the queue


class JobManager:
    """Starts, queues, cancels and resumes the runs of one runs folder.

    Used by the web app (one runs folder per browser session) and by the command line. Building
    one marks runs whose worker died as ``interrupted`` and lets the queue move on.
    """

    def __init__(self, runs_dir: Path | str, max_parallel: int | None = None, max_queued: int | None = None,
                 quota=None):
        self.runs_dir = Path(runs_dir)
        self.quota = quota  # a transfer.core.quota.DiskQuota for a web session's folder; None: no quota
        self.max_parallel = default_max_parallel() if max_parallel is None else check_max_parallel(max_parallel)
        self.max_queued = default_max_queued() if max_queued is None else _check_max_queued(max_queued)
        self.refresh()

    # ----------------------------------------------------------------- starting

    def submit(self, config: dict) -> RunDir:
        """Create a run for ``config`` and queue it; a worker starts when a slot is free."""
        return self.submit_all([config])[0]

    def submit_all(self, configs: list[dict]) -> list[RunDir]:
        """Create and queue one run per config, all or none: refused with a sentence when the
        runs folder would have more than ``max_queued`` runs queued or running."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with self._submit_lock():
            self._check_room(len(configs))
            runs = [RunDir.create(self.runs_dir, config) for config in configs]
            for run in runs:
                self._enqueue(run)
        self.backend.move_queue()
        return runs

    def start(self, run: RunDir) -> RunDir:
        """Queue a ``queued`` run (one created by hand) and let the dispatcher start it."""
        self._enqueue(run)
        self.backend.move_queue()
        return run

    def _enqueue(self, run: RunDir) -> None:
        self.backend.submit(run, self.max_parallel)

    @property
    def backend(self):
        """Who runs the jobs: this machine's queue or a Ray cluster (chosen from the environment)."""
        return job_backend()

    def active_runs(self) -> list[RunDir]:
        """This folder's runs that are queued or running (dead workers accounted for)."""
        self._mark_dead_runs()
        return [run for run in list_runs(self.runs_dir) if run.state in ACTIVE_STATES]

    def _check_room(self, wanted: int) -> None:
        if self.quota is not None:
            # A run writes its weights, a checkpoint and its outputs as it trains; it starts only
            # when its session's quota still has room for a typical run, and its worker checks
            # what it writes against the quota left in the runs folder.
            self.quota.check(wanted * RUN_ROOM_BYTES)
            self.quota.leave_in(self.runs_dir)
        active = len(self.active_runs())
        if active + wanted <= self.max_queued:
            return
        limit = self.max_queued
        if wanted == 1:
            raise SessionQueueFull(
                f"This session already has {active} runs queued or running, the most it may have at once "
                f"is {limit}; wait for one to finish or stop one, then start this one.")
        raise SessionQueueFull(
            f"This starts {wanted} runs, but this session already has {active} of its {limit} queued or "
            f"running; wait for {active + wanted - limit} of them to finish or stop them first.")

    def _submit_lock(self):
        # Two quick clicks in one session must not both pass the limit check.
        return file_lock(self.runs_dir / ".submit.lock")

    # ----------------------------------------------------------------- looking

    def get(self, run_id: str) -> RunDir:
        return find_run(self.runs_dir, run_id)

    def status(self, run: RunDir | str) -> dict:
        """The run's status as of now. Asking is also what keeps the queue moving: now and then
        (every ``QUEUE_CHECK_SECONDS`` per run) a run whose worker died is marked interrupted,
        and a queued run lets the dispatcher look for a free slot (a worker that was killed
        cannot hand its slot on by itself)."""
        run = self._as_run(run)
        key, now = str(run.path), time.monotonic()
        if now - _queue_checked_at.get(key, float("-inf")) >= QUEUE_CHECK_SECONDS:
            _queue_checked_at[key] = now
            self.check(run)
            if run.state == QUEUED:
                self.backend.move_queue()
        return run.status()

    def list(self) -> list[RunDir]:
        """The runs of this runs folder, newest first, with dead workers accounted for."""
        self.refresh()
        return list_runs(self.runs_dir)

    def refresh(self) -> list[RunDir]:
        """Mark runs that say queued or running but have no live worker as ``interrupted``
        (returned), and let the machine's queue move on."""
        marked = self._mark_dead_runs()
        self.backend.move_queue()
        return marked


    def _mark_dead_runs(self) -> list[RunDir]:
        return [run for run in list_runs(self.runs_dir) if self.check(run)]

    def check(self, run: RunDir) -> bool:
        """Mark ``run`` ended if it says queued or running but nothing looks after it any more
        (``interrupted``, or what the back end knows better: a cluster job that could not write
        the run folder failed, one stopped after a cancel was cancelled); True when it was marked.
        A cancel the run has not answered in ``CANCEL_ANSWER_SECONDS`` is enforced here."""
        status = run.status()
        if status["state"] not in ACTIVE_STATES:
            return False
        backend = self.backend  # one back end for the whole look: it remembers what it asked
        if backend.alive(run, status):
            if _cancel_unanswered(run, status):
                backend.cancel(run)
            return False
        state, message = backend.ended_as(run, status)
        marked = run.transition(
            ACTIVE_STATES,
            with_event={"type": "end", "state": state, "message": message, "epoch": status.get("epoch", 0)},
            state=state,
            ended_at=time.time(),
            queue_position=None,
            waiting_for=None,
            message=message,
        )
        if marked is None:
            return False
        backend.forget(run)
        return True


    # ----------------------------------------------------------------- controlling

    def cancel(self, run: RunDir | str) -> RunDir:
        """Stop a run. A queued run is cancelled at once; a running one stops at its next step
        and keeps its last finished epoch. A run that already ended is left as it is, except an
        interrupted one, which becomes cancelled."""
        run = self._as_run(run)
        self.check(run)
        state = run.state
        if state in (FINISHED, FAILED, CANCELLED):
            return run
        if state == INTERRUPTED:
            message = "Cancelled; the last finished epoch is kept."
            run.transition([INTERRUPTED], with_event={"type": "info", "message": message},
                           state=CANCELLED, message=message)
            return run
        run.request_cancel()
        message = "Cancelled before it started."
        ended = run.transition([QUEUED], with_event={"type": "end", "state": CANCELLED, "message": message},
                               state=CANCELLED, ended_at=time.time(), queue_position=None, message=message)
        if ended is not None:
            self.backend.cancel(run)  # out of the queue at once; the runs behind it move up
        return run

    def resume(self, run: RunDir | str) -> RunDir:
        """Queue an interrupted, cancelled or failed run again; training continues from its
        checkpoint (its last finished epoch) when there is one."""
        run = self._as_run(run)
        with self._submit_lock():
            self.check(run)
            status = run.status()
            state = status["state"]
            if state == FINISHED:
                raise RunStateError(f"Run {run.id} already finished; start a new run to train it further.")
            if state in ACTIVE_STATES:
                raise RunStateError(f"Run {run.id} is already {state}; wait for it or cancel it first.")
            self._check_room(1)
            run.clear_cancel()
            resumed = run.transition(
                RESUMABLE_STATES,
                state=QUEUED,
                queued_at=time.time(),
                ended_at=None,
                pid=None,
                node=None,
                waiting_for=None,
                resumes=int(status.get("resumes", 0)) + 1,
                earlier_seconds=_attempt_seconds(status) + float(status.get("earlier_seconds") or 0.0),
                started_at=None,
                message="Resumed; waiting for a free training slot.",
            )
            if resumed is None:
                raise RunStateError(f"Run {run.id} changed state while resuming; look at `transfer runs` and try again.")
            run.append_event({"type": "info", "message": f"Resumed after epoch {status.get('epoch', 0)}.",
                              "resumed_after_epoch": status.get("epoch", 0)})
            self._enqueue(run)
        self.backend.move_queue()
        return run

    def wait(self, run: RunDir | str, timeout: float | None = None, poll: float = 0.2,
             on_event=None) -> dict:
        """Block until the run ends and return its final status. ``on_event(event)`` is called
        for every event, old and new, in order. Raises ``TimeoutError`` after ``timeout`` s."""
        run = self._as_run(run)
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        last_dispatch = time.monotonic()
        while True:
            if on_event is not None:
                events, offset = run.read_events(offset)
                for event in events:
                    on_event(event)
            status = run.status()
            if status["state"] in ENDED_STATES:
                if on_event is not None:
                    for event in run.read_events(offset)[0]:
                        on_event(event)
                return status
            if self.check(run):
                continue
            if status["state"] == QUEUED and time.monotonic() - last_dispatch > 2.0:
                self.backend.move_queue()  # a slot freed by a worker that died moves the queue on too
                last_dispatch = time.monotonic()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run.id} still {status['state']} after {timeout} s")
            time.sleep(poll)

    def _as_run(self, run: RunDir | str) -> RunDir:
        return run if isinstance(run, RunDir) else find_run(self.runs_dir, run)


def _attempt_seconds(status: dict) -> float:
    started, ended = status.get("started_at"), status.get("ended_at")
    if started is None or ended is None:
        return 0.0
    return round(max(0.0, ended - started), 3)


def _cancel_unanswered(run: RunDir, status: dict) -> bool:
    """Whether a running run was asked to stop ``CANCEL_ANSWER_SECONDS`` ago and still runs."""
    asked = run.cancel_requested_at()
    return status["state"] == RUNNING and asked is not None and time.time() - asked > CANCEL_ANSWER_SECONDS
