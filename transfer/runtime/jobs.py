"""Jobs: training runs (and the studio's other heavy work) queued per machine, each trained by
its own worker process, started by one dispatcher only when the run leaves the queue.

There is no daemon. The queue belongs to the machine, not to one runs folder, so every browser
session and every terminal shares it. It lives under ``transfer.core.paths.home() / "queue"``:

- ``entries/<priority>-<nanoseconds>-<run id>.json``: one per waiting run; lower priority
  first, then arrival (FIFO) order. A waiting run has no process at all.
- ``slots/<pool>-<i>.lock``: the ``device`` pool has ``max_parallel`` slots (training, the
  learning-rate finder), the ``probe`` pool one (short speed measurements). A worker trains
  while it holds an ``flock`` on one of them; the OS releases it when the worker exits or dies,
  so a crash can never leak a slot. A distributed run on GPUs takes one slot per GPU it uses
  on this machine (at most the whole pool), all at once or none; on the CPU its processes share
  one slot, and that slot's threads (see :func:`slots_needed`).
- ``dispatch.lock``: :func:`dispatch` runs under it, so any number of web servers, sessions
  and terminals may call it at once (a caller that finds it taken leaves a note,
  ``dispatch.wanted``, and returns at once; the holder looks again). It takes a free slot and the run's worker lock itself,
  then starts ``python -m transfer.runtime.worker RUN_DIR`` in a new session (a fresh interpreter,
  never a fork of a process that may have initialised CUDA) handing both locks over as open
  descriptors: from the first instant the run is visibly taken and the slot visibly busy.
  While a studio runs, the same worker is forked instead by its warm fork server, which has
  torch and the backbones loaded and never touches CUDA (see :mod:`transfer.runtime.warm`).

Whoever changes the queue calls :func:`dispatch`: a submit, a cancel, a resume, a worker that
just ended (so the queue moves on with no server at all), and every ``JobManager`` as it is
built (so a restarted server or a terminal finds queued runs and starts them). Whoever looks
moves it too: :meth:`JobManager.status` now and then marks a dead worker's run and lets a
queued run look for a free slot, so a page that shows a run never moves the queue itself.

Each worker holds an ``flock`` on its run's ``.worker.lock`` while it lives; that is how any
process tells a live worker from a dead one (a dead worker's run becomes ``interrupted``).
Workers run at a lower CPU priority and with a bounded number of threads, so the web pages
stay responsive while they train.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path

from transfer.core import machine
from transfer.core import paths
from transfer.core.child import child_environment, start_module
from transfer.runtime import warm
from transfer.core.errors import TransferError
from transfer.core.runs import (ACTIVE_STATES, CANCELLED, ENDED_STATES, FAILED, FINISHED, INTERRUPTED,
    QUEUED, RESUMABLE_STATES, RunDir, RunStateError, find_run, list_runs)
from transfer.core.files import atomic_write_json, file_lock, lock_is_held, lock_with_retry, read_json, try_lock

MAX_PARALLEL_ENV = "TRANSFER_MAX_PARALLEL_JOBS"
MAX_QUEUED_ENV = "TRANSFER_MAX_QUEUED"
WORKER_THREADS_ENV = "TRANSFER_WORKER_THREADS"
DEFAULT_MAX_QUEUED = 4
QUEUE_POLL_SECONDS = 0.3
# A run that is queued but not yet in the queue is given this long before it counts as dead
# (the gap between creating its folder and writing its queue entry).
STARTUP_GRACE_SECONDS = 60.0
# Workers yield the CPU to the web server: nice 10 gets about a tenth of a core's share
# against a process at nice 0 when both want it.
WORKER_NICE = 10

DEVICE_POOL, PROBE_POOL = "device", "probe"
PROBE_SLOTS = 1
# job type -> (pool, priority). Short jobs that a person waits for on a page go first; the
# learning-rate finder and the audits (features of every picture) still need the device, speed
# measurements are a few forward passes.
_JOB_PLACES = {"lr_find": (DEVICE_POOL, 0), "audit": (DEVICE_POOL, 0), "suggest": (DEVICE_POOL, 0), "estimate": (PROBE_POOL, 0)}
_TRAINING_PLACE = (DEVICE_POOL, 1)


class JobStartError(TransferError):
    """The worker process could not be started."""


class BadMaxParallel(TransferError):
    """An unusable number of parallel jobs."""


class SessionQueueFull(TransferError):
    """The runs folder (a browser session) already has its limit of queued and running runs."""


# --------------------------------------------------------------------------- settings


def default_max_parallel() -> int:
    """Training jobs at once on this machine: ``$TRANSFER_MAX_PARALLEL_JOBS``, else 1 (one job
    per device; two jobs sharing a GPU or two CPU cores only slow each other down)."""
    raw = os.environ.get(MAX_PARALLEL_ENV, "").strip()
    if not raw:
        return 1
    return _check_max_parallel(raw)


def _check_max_parallel(value) -> int:
    return _positive_whole_number(
        value, f"The number of parallel training jobs must be a whole number of at least 1, not {value!r}; "
               f"fix {MAX_PARALLEL_ENV} or the setting.")


def default_max_queued() -> int:
    """Queued plus running runs one runs folder (a browser session) may have:
    ``$TRANSFER_MAX_QUEUED``, else 4."""
    raw = os.environ.get(MAX_QUEUED_ENV, "").strip()
    return _check_max_queued(raw) if raw else DEFAULT_MAX_QUEUED


def _check_max_queued(value) -> int:
    return _positive_whole_number(
        value, f"The number of queued runs per session must be a whole number of at least 1, not {value!r}; "
               f"fix {MAX_QUEUED_ENV} or the setting.")


def _positive_whole_number(value, sentence: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise BadMaxParallel(sentence)
    return number


def worker_threads(max_parallel: int) -> int:
    """Threads each worker's torch may use: ``$TRANSFER_WORKER_THREADS``, else the cores shared
    out between the parallel slots, so parallel workers never oversubscribe the CPU."""
    raw = os.environ.get(WORKER_THREADS_ENV, "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    return max(1, machine.cpu_cores() // max(1, max_parallel))


def queue_dir() -> Path:
    path = paths.private_dir(paths.home() / "queue")  # entries name every session's runs
    (path / "entries").mkdir(parents=True, exist_ok=True)
    (path / "slots").mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- locks and liveness


def pid_is_worker(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ``transfer.runtime.worker`` process. Where ``/proc`` is
    missing it falls back to "some process has this pid"."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        # A worker forked by the warm fork server keeps that server's command line.
        return state not in ("Z", "X") and (b"transfer.runtime.worker" in cmdline or warm.SERVER_MODULE.encode() in cmdline)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(run: RunDir, status: dict | None = None) -> bool:
    """Whether ``run`` is looked after: a live worker, or (while queued) its place in the queue."""
    if lock_is_held(run.worker_lock_path):
        return True
    status = run.status() if status is None else status
    if status["state"] == QUEUED:
        if find_queue_entry(run) is not None:
            return True  # waiting runs have no process by design
        waiting_since = status.get("queued_at") or status.get("created_at") or 0.0
        return time.time() - waiting_since < STARTUP_GRACE_SECONDS
    pid = status.get("pid")
    return isinstance(pid, int) and pid_is_worker(pid)


# --------------------------------------------------------------------------- the queue


def job_place(config: dict) -> tuple[str, int]:
    """The slot pool and priority (lower first) of a run with this config."""
    return _JOB_PLACES.get(config.get("job", "train"), _TRAINING_PLACE)


def slots_needed(config: dict, max_parallel: int) -> int:
    """Device slots a run of ``config`` takes while it trains. A distributed run on GPUs takes one
    per GPU its processes use on this machine, at most all ``max_parallel``; every other run
    takes one. On the CPU the processes of a distributed run share one slot: the slot stands for
    a share of the cores, and its threads are divided between the processes."""
    if job_place(config)[0] != DEVICE_POOL:
        return 1
    processes = int(config.get("nproc_per_node") or 1)
    if processes <= 1 or not machine.trains_on_gpus(config.get("device", "auto")):
        return 1
    return max(1, min(processes, max_parallel))


def add_queue_entry(run: RunDir, max_parallel: int) -> Path:
    """Put ``run`` at the back of its part of the machine's queue."""
    pool, priority = job_place(run.config)
    path = queue_dir() / "entries" / f"{priority}-{time.time_ns():020d}-{run.id}.json"
    atomic_write_json(path, {"run_dir": str(run.path), "max_parallel": max_parallel, "pool": pool,
                             "slots": slots_needed(run.config, max_parallel), "created_at": time.time()})
    return path


def queue_entries() -> list[tuple[Path, dict]]:
    """The entries of runs still waiting, in queue order; entries whose run is no longer
    waiting (cancelled, deleted, or already handed to a worker) are removed on the way."""
    live = []
    for path in sorted((queue_dir() / "entries").glob("*.json")):
        entry = read_json(path)
        if isinstance(entry, dict) and _entry_is_waiting(entry):
            live.append((path, entry))
        else:
            remove_queue_entry(path)
    return live


def _entry_is_waiting(entry: dict) -> bool:
    run = RunDir(entry.get("run_dir", "/nonexistent"))
    return run.exists() and run.state == QUEUED and not lock_is_held(run.worker_lock_path)


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
    """1 for the next run of its pool to start, 2 for the one after, ...; None when ``run`` is
    not waiting."""
    for place, (_, entry) in _places(queue_entries()):
        if Path(entry["run_dir"]) == run.path:
            return place
    return None


def _places(entries: list[tuple[Path, dict]]):
    """``(place in its pool, (path, entry))`` for each entry, in queue order."""
    seen: dict[str, int] = {}
    for item in entries:
        pool = item[1].get("pool", DEVICE_POOL)
        seen[pool] = seen.get(pool, 0) + 1
        yield seen[pool], item


def slot_path(index: int, pool: str = DEVICE_POOL) -> Path:
    name = f"slot-{index}" if pool == DEVICE_POOL else f"{pool}-{index}"
    return queue_dir() / "slots" / f"{name}.lock"


def pool_size(entry: dict) -> int:
    if entry.get("pool", DEVICE_POOL) == PROBE_POOL:
        return PROBE_SLOTS
    return int(entry.get("max_parallel") or 1)


def free_slot_count(max_parallel: int, pool: str = DEVICE_POOL) -> int:
    return sum(not lock_is_held(slot_path(i, pool)) for i in range(max_parallel))


def try_take_slots(count: int, max_parallel: int, pool: str = DEVICE_POOL) -> list[int]:
    """Descriptors holding ``count`` of the machine's ``max_parallel`` slots of ``pool``, or none
    at all when fewer are free (a run never waits holding part of what it needs)."""
    taken = []
    for index in range(max_parallel):
        fd = try_lock(slot_path(index, pool))
        if fd is not None:
            taken.append(fd)
            if len(taken) == count:
                return taken
    for fd in taken:
        os.close(fd)
    return []


# --------------------------------------------------------------------------- the dispatcher

# Workers this process started; polled now and then so that they do not linger as zombies. The
# web server's page threads dispatch at the same time, hence the lock.
_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()


def dispatch() -> list[RunDir]:
    """Start a worker for each waiting run that a free slot allows, first in the queue first,
    and bring the queue places of the others up to date. Safe to call from any process at any
    time, and it never waits: when another process is dispatching, a note asks it to look
    once more after its pass (a web page must not wait behind a worker that holds the lock at
    a low CPU priority). Returns the runs this call started."""
    _reap_children()
    warm.keep_alive(queue_dir())  # a studio's fork server that died comes back here
    wanted = queue_dir() / "dispatch.wanted"
    wanted.touch()
    started: list[RunDir] = []
    while wanted.exists():
        lock = try_lock(queue_dir() / "dispatch.lock")
        if lock is None:
            return started  # its holder checks the note after letting go of the lock
        try:
            wanted.unlink(missing_ok=True)
            started += _dispatch_pass()
        finally:
            os.close(lock)
    return started


def _dispatch_pass() -> list[RunDir]:
    started: list[RunDir] = []
    full_pools: set[str] = set()
    for path, entry in queue_entries():
        pool = entry.get("pool", DEVICE_POOL)
        if pool in full_pools:
            continue  # first come, first served within a pool
        run = _start_entry(path, entry)
        if run is None:
            full_pools.add(pool)
        elif run is not False:
            started.append(run)
    for place, (_, entry) in _places(queue_entries()):
        run = RunDir(entry["run_dir"])
        if run.status().get("queue_position") != place:
            ahead = "next in line" if place == 1 else f"{place - 1} runs ahead"
            slots = int(entry.get("slots") or 1)
            wanted = "a free training slot" if slots == 1 else f"{slots} free training slots (one per GPU)"
            run.transition([QUEUED], queue_position=place, message=f"Waiting for {wanted} ({ahead}).")
    return started


def _start_entry(path: Path, entry: dict):
    """Hand one waiting run to a new worker: the run, None when its pool has no free slot, or
    False when the entry turned out to need nothing (its run was taken meanwhile)."""
    size = pool_size(entry)
    slots = try_take_slots(min(int(entry.get("slots") or 1), size), size, entry.get("pool", DEVICE_POOL))
    if not slots:
        return None
    run = RunDir(entry["run_dir"])
    lock = lock_with_retry(run.worker_lock_path)
    try:
        if lock is None or run.state != QUEUED:
            remove_queue_entry(path)
            return False
        try:
            process = _spawn_worker(run, slots, lock, size)
        except OSError as error:
            remove_queue_entry(path)
            message = f"Could not start the training process ({error}); check that Python can run here."
            run.transition([QUEUED], with_event={"type": "end", "state": FAILED, "message": message},
                           state=FAILED, ended_at=time.time(), queue_position=None, message=message)
            return False
        run.transition([QUEUED], pid=process.pid, message="Starting.")
        remove_queue_entry(path)
        return run
    finally:
        for slot in slots:
            os.close(slot)  # the worker holds its own copies of the descriptors now
        if lock is not None:
            os.close(lock)


def _spawn_worker(run: RunDir, slots: list[int], lock: int, max_parallel: int):
    """The worker process of ``run``: forked by the studio's warm fork server when one is ready
    (see transfer.runtime.warm), else a fresh interpreter."""
    threads = str(worker_threads(max_parallel) * len(slots))  # each slot brings its share of the cores
    env = {"PYTHONUNBUFFERED": "1", WORKER_THREADS_ENV: threads, "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    forked = warm.fork_worker(queue_dir(), run.path, lock, slots, child_environment(env))
    if forked is not None:
        return forked
    arguments = [str(run.path), "--lock-fd", str(lock)]
    for slot in slots:
        arguments += ["--slot-fd", str(slot)]
    with open(run.log_path, "ab") as log:
        process = start_module("transfer.runtime.worker", arguments, env=env, log=log, pass_fds=(*slots, lock))
    with _children_lock:
        _children.append(process)
    return process


def _reap_children() -> None:
    with _children_lock:
        _children[:] = [process for process in _children if process.poll() is None]


def lower_priority() -> None:
    """Make this process yield the CPU to interactive ones (the web server): nice
    ``WORKER_NICE``, never raising a niceness that is already higher."""
    with contextlib.suppress(AttributeError, OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < WORKER_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICE)


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
        self.max_parallel = default_max_parallel() if max_parallel is None else _check_max_parallel(max_parallel)
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
        dispatch()
        return runs

    def start(self, run: RunDir) -> RunDir:
        """Queue a ``queued`` run (one created by hand) and let the dispatcher start it."""
        self._enqueue(run)
        dispatch()
        return run

    def _enqueue(self, run: RunDir) -> None:
        add_queue_entry(run, self.max_parallel)
        run.update_status(message="Waiting for a free training slot.")

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
                dispatch()
        return run.status()

    def list(self) -> list[RunDir]:
        """The runs of this runs folder, newest first, with dead workers accounted for."""
        self.refresh()
        return list_runs(self.runs_dir)

    def refresh(self) -> list[RunDir]:
        """Mark runs that say queued or running but have no live worker as ``interrupted``
        (returned), and let the machine's queue move on."""
        marked = self._mark_dead_runs()
        dispatch()
        return marked


    def _mark_dead_runs(self) -> list[RunDir]:
        return [run for run in list_runs(self.runs_dir) if self.check(run)]

    def check(self, run: RunDir) -> bool:
        """Mark ``run`` ``interrupted`` if it says queued or running but nothing looks after it;
        True when it was marked."""
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
            entry = find_queue_entry(run)
            if entry:
                remove_queue_entry(entry[0])
            dispatch()  # the runs behind it move up
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
        dispatch()
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
                dispatch()  # a slot freed by a worker that died moves the queue on too
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


def _interrupted_message(status: dict) -> str:
    epoch = status.get("epoch") or 0
    kept = f"epoch {epoch} is kept" if epoch else "no epoch had finished"
    return (f"The training process stopped unexpectedly while {status['state']} ({kept}); "
            "resume the run to continue from its last finished epoch.")
