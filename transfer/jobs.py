"""Jobs: each training run is trained by its own worker process, queued per machine.

There is no daemon. ``JobManager.submit`` creates a run directory and starts
``python -m transfer.worker RUN_DIR`` in a new session: a fresh interpreter (never a fork of a
process that may have initialised CUDA) that outlives the web server's reruns and restarts.

The queue belongs to the machine, not to one runs folder, so every browser session and every
terminal shares it. It lives under ``transfer.paths.home() / "queue"``:

- ``entries/<nanoseconds>-<run id>.json``: one per waiting run, in arrival (FIFO) order;
- ``slots/slot-<i>.lock``: ``max_parallel`` files; a worker trains while it holds an ``flock``
  on one of them, and the OS releases it when the worker exits or dies, so a crash can never
  leak a slot.

A waiting worker polls: it takes a free slot only when no live entry is ahead of it beyond the
number of free slots, and keeps its run's ``queue_position`` (1 = next) up to date. Each worker
also holds an ``flock`` on its run's ``.worker.lock`` while it lives; that is how any process
tells a live worker from a dead one (a dead worker's run becomes ``interrupted``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from transfer import paths
from transfer.errors import TransferError
from transfer.runs import (
    ACTIVE_STATES,
    CANCELLED,
    ENDED_STATES,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RESUMABLE_STATES,
    RunDir,
    RunStateError,
    atomic_write_json,
    find_run,
    list_runs,
    read_json,
)

MAX_PARALLEL_ENV = "TRANSFER_MAX_PARALLEL_JOBS"
QUEUE_POLL_SECONDS = 0.3
# A run that is queued but has no worker pid yet is given this long before it counts as dead
# (the gap between creating its queue entry and the worker process existing).
STARTUP_GRACE_SECONDS = 60.0


class JobStartError(TransferError):
    """The worker process could not be started."""


class BadMaxParallel(TransferError):
    """An unusable number of parallel jobs."""


# --------------------------------------------------------------------------- settings


def default_max_parallel() -> int:
    """Training jobs at once on this machine: ``$TRANSFER_MAX_PARALLEL_JOBS``, else 1 (one job
    per device; two jobs sharing a GPU or two CPU cores only slow each other down)."""
    raw = os.environ.get(MAX_PARALLEL_ENV, "").strip()
    if not raw:
        return 1
    return _check_max_parallel(raw)


def _check_max_parallel(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise BadMaxParallel(
            f"The number of parallel training jobs must be a whole number of at least 1, not {value!r}; "
            f"fix {MAX_PARALLEL_ENV} or the setting."
        )
    return number


def queue_dir() -> Path:
    path = paths.private_dir(paths.home() / "queue")  # entries name every session's runs
    (path / "entries").mkdir(parents=True, exist_ok=True)
    (path / "slots").mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- locks and liveness


def lock_is_held(path: Path) -> bool:
    """Whether some process (this one included, through another open file) holds an ``flock``
    on ``path``. Probing takes the lock for an instant, so owners retry a failed first try."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor also drops a lock we just took
    return False


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``path``, or None if it is taken.
    Keep the descriptor open for as long as the lock should last."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def pid_is_worker(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ``transfer.worker`` process. Where ``/proc`` is
    missing it falls back to "some process has this pid"."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        return state not in ("Z", "X") and b"transfer.worker" in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(run: RunDir, status: dict | None = None) -> bool:
    """Whether a worker process is (or is about to be) looking after ``run``."""
    if lock_is_held(run.worker_lock_path):
        return True
    status = run.status() if status is None else status
    pid = status.get("pid")
    if isinstance(pid, int):
        return pid_is_worker(pid)
    waiting_since = status.get("queued_at") or status.get("created_at") or 0.0
    return time.time() - waiting_since < STARTUP_GRACE_SECONDS


# --------------------------------------------------------------------------- the queue


def add_queue_entry(run: RunDir, max_parallel: int) -> Path:
    """Put ``run`` at the back of the machine's queue."""
    path = queue_dir() / "entries" / f"{time.time_ns():020d}-{run.id}.json"
    atomic_write_json(path, {"run_dir": str(run.path), "max_parallel": max_parallel, "created_at": time.time()})
    return path


def queue_entries() -> list[tuple[Path, dict]]:
    """The live queue entries in FIFO order; entries whose run is no longer waiting or whose
    worker died are removed on the way."""
    live = []
    for path in sorted((queue_dir() / "entries").glob("*.json")):
        entry = read_json(path)
        if isinstance(entry, dict) and _entry_is_live(entry):
            live.append((path, entry))
        else:
            remove_queue_entry(path)
    return live


def _entry_is_live(entry: dict) -> bool:
    run = RunDir(entry.get("run_dir", "/nonexistent"))
    if not run.exists():
        return False
    status = run.status()
    return status["state"] == QUEUED and worker_alive(run, status)


def find_queue_entry(run: RunDir) -> tuple[Path, dict] | None:
    for path in sorted((queue_dir() / "entries").glob(f"*-{run.id}.json")):
        entry = read_json(path)
        if isinstance(entry, dict) and Path(entry.get("run_dir", "")) == run.path:
            return path, entry
    return None


def remove_queue_entry(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def queue_position(run: RunDir) -> int | None:
    """1 for the next run to start, 2 for the one after, ...; None when ``run`` is not queued."""
    for index, (_, entry) in enumerate(queue_entries(), start=1):
        if Path(entry["run_dir"]) == run.path:
            return index
    return None


def slot_path(index: int) -> Path:
    return queue_dir() / "slots" / f"slot-{index}.lock"


def free_slot_count(max_parallel: int) -> int:
    return sum(not lock_is_held(slot_path(i)) for i in range(max_parallel))


def try_take_slot(max_parallel: int) -> int | None:
    """A descriptor holding one of the machine's training slots, or None if all are busy."""
    for index in range(max_parallel):
        fd = try_lock(slot_path(index))
        if fd is not None:
            return fd
    return None


# --------------------------------------------------------------------------- the manager


class JobManager:
    """Starts, queues, cancels and resumes the training runs of one runs folder.

    Used by the web app (one runs folder per browser session) and by the command line. Building
    one marks runs whose worker died as ``interrupted``.
    """

    def __init__(self, runs_dir: Path | str, max_parallel: int | None = None):
        self.runs_dir = Path(runs_dir)
        self.max_parallel = default_max_parallel() if max_parallel is None else _check_max_parallel(max_parallel)
        self._processes: dict[Path, subprocess.Popen] = {}
        self.refresh()

    # ----------------------------------------------------------------- starting

    def submit(self, config: dict) -> RunDir:
        """Create a run for ``config`` and start its worker; it trains when a slot is free."""
        run = RunDir.create(self.runs_dir, config)
        return self.start(run)

    def start(self, run: RunDir) -> RunDir:
        """Queue a ``queued`` run and start its worker process."""
        entry = add_queue_entry(run, self.max_parallel)
        run.update_status(queue_position=queue_position(run) or 1, message="Waiting for a free training slot.")
        try:
            with open(run.log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "transfer.worker", str(run.path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C or restart of the server does not reach it
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
        except OSError as error:
            remove_queue_entry(entry)
            run.update_status(state=FAILED, ended_at=time.time(), queue_position=None,
                              message=f"Could not start the training process ({error}).")
            raise JobStartError(f"Could not start the training process ({error}); check that Python can run here.") from error
        self._processes[run.path] = process
        run.transition([QUEUED], pid=process.pid)
        return run

    # ----------------------------------------------------------------- looking

    def get(self, run_id: str) -> RunDir:
        return find_run(self.runs_dir, run_id)

    def list(self) -> list[RunDir]:
        """The runs of this runs folder, newest first, with dead workers accounted for."""
        self.refresh()
        return list_runs(self.runs_dir)

    def refresh(self) -> list[RunDir]:
        """Mark runs that say queued or running but have no live worker as ``interrupted``;
        returns them."""
        self._reap()
        return [run for run in list_runs(self.runs_dir) if self._refresh_run(run)]

    mark_interrupted = refresh

    def _refresh_run(self, run: RunDir) -> bool:
        status = run.status()
        if status["state"] not in ACTIVE_STATES or worker_alive(run, status):
            return False
        message = _interrupted_message(status)
        marked = run.transition(
            ACTIVE_STATES,
            with_event={"type": "end", "state": INTERRUPTED, "message": message, "epoch": status.get("epoch", 0)},
            state=INTERRUPTED,
            ended_at=time.time(),
            queue_position=None,
            message=message,
        )
        if marked is None:
            return False
        entry = find_queue_entry(run)
        if entry:
            remove_queue_entry(entry[0])
        return True

    def _reap(self) -> None:
        # Collect exit codes of workers this process started, so they do not linger as zombies.
        for key, process in list(self._processes.items()):
            if process.poll() is not None:
                del self._processes[key]

    # ----------------------------------------------------------------- controlling

    def cancel(self, run: RunDir | str) -> RunDir:
        """Stop a run. A queued run is cancelled at once; a running one stops at its next step
        and keeps its last finished epoch. A run that already ended is left as it is, except an
        interrupted one, which becomes cancelled."""
        run = self._as_run(run)
        self._refresh_run(run)
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
            entry = find_queue_entry(run)
            if entry:
                remove_queue_entry(entry[0])
        return run

    def resume(self, run: RunDir | str) -> RunDir:
        """Queue an interrupted, cancelled or failed run again; training continues from its
        checkpoint (its last finished epoch) when there is one."""
        run = self._as_run(run)
        self._refresh_run(run)
        status = run.status()
        state = status["state"]
        if state == FINISHED:
            raise RunStateError(f"Run {run.id} already finished; start a new run to train it further.")
        if state in ACTIVE_STATES:
            raise RunStateError(f"Run {run.id} is already {state}; wait for it or cancel it first.")
        run.clear_cancel()
        resumed = run.transition(
            RESUMABLE_STATES,
            state=QUEUED,
            queued_at=time.time(),
            ended_at=None,
            pid=None,
            resumes=int(status.get("resumes", 0)) + 1,
            earlier_seconds=_attempt_seconds(status) + float(status.get("earlier_seconds") or 0.0),
            started_at=None,
            message="Resumed; waiting for a free training slot.",
        )
        if resumed is None:
            raise RunStateError(f"Run {run.id} changed state while resuming; look at `transfer runs` and try again.")
        run.append_event({"type": "info", "message": f"Resumed after epoch {status.get('epoch', 0)}.",
                          "resumed_after_epoch": status.get("epoch", 0)})
        return self.start(run)

    def wait(self, run: RunDir | str, timeout: float | None = None, poll: float = 0.2,
             on_event=None) -> dict:
        """Block until the run ends and return its final status. ``on_event(event)`` is called
        for every event, old and new, in order. Raises ``TimeoutError`` after ``timeout`` s."""
        run = self._as_run(run)
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
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
            self._reap()
            if self._refresh_run(run):
                continue
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


def _interrupted_message(status: dict) -> str:
    epoch = status.get("epoch") or 0
    kept = f"epoch {epoch} is kept" if epoch else "no epoch had finished"
    return (f"The training process stopped unexpectedly while {status['state']} ({kept}); "
            "resume the run to continue from its last finished epoch.")
