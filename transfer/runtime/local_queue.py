"""The machine's own queue: the embedded back end of :mod:`transfer.runtime.jobs` (see
:mod:`transfer.runtime.backends`). Training runs (and the studio's other heavy work) are queued per
machine, each trained by its own worker process, started by one dispatcher only when the run
leaves the queue.

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
- ``running/<run id>.json``: one per run a worker trains now (:func:`running_runs`), so the
  queue can say what it runs, not only what waits.
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
from transfer.core.runs import ACTIVE_STATES, FAILED, QUEUED, RunDir
from transfer.core.files import atomic_write_json, lock_is_held, lock_with_retry, read_json, try_lock

MAX_PARALLEL_ENV = "TRANSFER_MAX_PARALLEL_JOBS"
WORKER_THREADS_ENV = "TRANSFER_WORKER_THREADS"
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


# --------------------------------------------------------------------------- settings


def default_max_parallel() -> int:
    """Training jobs at once on this machine: ``$TRANSFER_MAX_PARALLEL_JOBS``, else 1 (one job
    per device; two jobs sharing a GPU or two CPU cores only slow each other down)."""
    raw = os.environ.get(MAX_PARALLEL_ENV, "").strip()
    if not raw:
        return 1
    return check_max_parallel(raw)


def check_max_parallel(value) -> int:
    return positive_whole_number(
        value, f"The number of parallel training jobs must be a whole number of at least 1, not {value!r}; "
               f"fix {MAX_PARALLEL_ENV} or the setting.")


def positive_whole_number(value, sentence: str) -> int:
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
    for part in ("entries", "slots", "running"):
        (path / part).mkdir(parents=True, exist_ok=True)
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
    if not run.exists():
        return False
    status = run.status()
    if status["state"] != QUEUED:
        return False
    # Handed to a worker: the dispatcher notes the worker's pid before it removes the entry.
    # A held lock without a pid is the previous worker of a resumed run, still ending (its
    # torchrun stopping, say): the run keeps its place until that worker lets the lock go.
    return not (status.get("pid") and lock_is_held(run.worker_lock_path))


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


# --------------------------------------------------------------------------- runs being trained


def note_running(run: RunDir) -> Path:
    """Note that this machine's worker trains ``run`` now (``running/<run id>.json``), so the
    queue can list what it runs besides what waits; the worker removes it when it ends."""
    path = queue_dir() / "running" / f"{run.id}.json"
    atomic_write_json(path, {"run_dir": str(run.path), "started_at": time.time()})
    return path


def running_runs() -> list[RunDir]:
    """The runs this machine's workers train now; notes of workers that died are removed."""
    runs = []
    for path in sorted((queue_dir() / "running").glob("*.json")):
        note = read_json(path)
        run = RunDir(note["run_dir"]) if isinstance(note, dict) and note.get("run_dir") else None
        if run is not None and run.exists() and run.state in ACTIVE_STATES and lock_is_held(run.worker_lock_path):
            runs.append(run)
        else:
            remove_queue_entry(path)
    return runs


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
            run.transition([QUEUED], queue_position=place, message=f"Waiting for {slots_wanted(entry)} ({ahead}).")
    return started


def slots_wanted(entry: dict) -> str:
    """What a waiting run waits for: ``a free training slot``, ``2 free training slots (one per GPU)``."""
    slots = int(entry.get("slots") or 1)
    return "a free training slot" if slots == 1 else f"{slots} free training slots (one per GPU)"


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
        if lock is None and run.state == QUEUED:
            # A resumed run whose previous worker is still ending (stopping its ranks, say):
            # it keeps its place, and the next pass (that worker's own, as it exits) starts it.
            return None
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
