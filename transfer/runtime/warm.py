"""The warm worker, as the queue sees it: while a studio runs, new runs start as forks of one
process that already has torch, the model code and the bundled backbones loaded.

A fresh worker interpreter spends seconds importing torch and timm and building its backbone
before it touches a picture. While a studio server runs on a ``TRANSFER_HOME``, one low-priority
*fork server* (:mod:`transfer.runtime.warm_server`) keeps all that loaded and forks a worker per run
instead. Everything lives in the machine's queue folder (``transfer.runtime.local_queue.queue_dir``):

- ``studio.lock``: every studio server process holds a shared ``flock`` on it for its life
  (:func:`announce_studio`); the fork server runs only while someone holds it;
- ``warm.lock``: the fork server holds it exclusively while it lives (one per queue);
- ``warm.sock``: where it listens once warm. The dispatcher sends the run folder and its
  environment as one JSON line with the run lock and slot locks as open descriptors
  (``SCM_RIGHTS``), exactly what it would hand a fresh ``python -m transfer.runtime.worker``; the fork
  server answers with the new worker's pid.

Nothing else changes: the forked worker runs ``transfer.runtime.worker.main`` with the same locks,
slots, nice level and thread count, so queueing, cancelling, resuming and a killed worker
behave as before. The fork server itself never reads a run folder, so it holds no user data
between runs. When it is missing, dead, still warming up, or answers wrongly, the dispatcher
starts a fresh interpreter as it always did, and :func:`keep_alive` (called by every dispatch)
starts a new fork server while a studio runs. ``TRANSFER_WARM_WORKER=0`` turns it all off.

This module is the client side and imports nothing heavy; it must not import ``transfer.runtime.jobs``
(which imports it), so the queue folder is passed in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transfer.core.files import atomic_write_json, lock_is_held

WARM_ENV = "TRANSFER_WARM_WORKER"
STUDIO_LOCK = "studio.lock"
SERVER_LOCK = "warm.lock"
SOCKET_NAME = "warm.sock"
SERVER_LOG = "warm.log"
SERVER_MODULE = "transfer.runtime.warm_server"
# The code a fork server runs must be the code the caller would have started: a terminal using
# another checkout starts its own fresh worker instead.
CODE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding transfer/
# A fork answers in milliseconds; a fork server too busy to answer in this time is skipped.
ANSWER_SECONDS = 5.0
# Unix socket paths are limited to 108 bytes; a longer queue folder simply goes without.
MAX_SOCKET_PATH = 100
# Each start imports torch and loads the backbones (seconds, about 1 GB): a fork server that dies
# before it is warm is started again only after a wait that doubles with each such failure.
STARTS_FILE = "warm-starts.json"
FIRST_RETRY_SECONDS = 10.0
MAX_RETRY_SECONDS = 900.0

_started: list[subprocess.Popen] = []  # fork servers this process started, reaped once they exit

_studio_lock_fd: int | None = None


@dataclass(frozen=True)
class ForkedWorker:
    """A worker the fork server started: what the dispatcher records of it (its pid)."""

    pid: int


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


# --------------------------------------------------------------------------- the studio's side


def announce_studio(queue: Path) -> None:
    """Called once by a studio server process: hold the shared studio lock for the life of this
    process and start the fork server. Safe to call again (it does nothing the second time)."""
    global _studio_lock_fd
    if not enabled():
        return
    if _studio_lock_fd is None:
        fd = os.open(queue / STUDIO_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)  # shared: several studios may use one TRANSFER_HOME
        _studio_lock_fd = fd
    keep_alive(queue)


def studio_running(queue: Path) -> bool:
    """Whether some studio server process holds the studio lock (shared: the probe must be
    exclusive; a studio taking its lock just then only waits that instant)."""
    return lock_is_held(queue / STUDIO_LOCK, exclusive_probe=True)


def server_alive(queue: Path) -> bool:
    """Whether a fork server holds ``warm.lock`` (it may still be warming up)."""
    return lock_is_held(queue / SERVER_LOCK)


def keep_alive(queue: Path, now: float | None = None) -> bool:
    """Start a fork server when a studio runs and none lives (it died, or was never started);
    True when one was started. Cheap enough for every dispatch: two lock probes. Never for a
    queue folder whose socket path is too long, and after a start that never got warm only
    once its wait is over (:func:`retry_wait`)."""
    _reap_started()
    if not enabled() or not studio_running(queue) or server_alive(queue):
        return False
    if len(str(queue / SOCKET_NAME)) > MAX_SOCKET_PATH:
        return False  # it could never listen: every run starts a fresh interpreter instead
    now = time.time() if now is None else now
    starts = _read_starts(queue)
    if now - starts["last"] < retry_wait(starts["failed"]):
        return False
    _write_starts(queue, {"failed": starts["failed"] + 1, "last": now})  # counts as failed until warm
    start_server(queue)
    return True


def retry_wait(failed_starts: int) -> float:
    """Seconds to wait before starting again after ``failed_starts`` starts in a row never got warm."""
    return 0.0 if failed_starts <= 0 else min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (failed_starts - 1))


def record_warm(queue: Path) -> None:
    """Called by the fork server once it listens: the starts so far succeeded."""
    _write_starts(queue, {"failed": 0, "last": time.time()})


def _read_starts(queue: Path) -> dict:
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        data = json.loads((queue / STARTS_FILE).read_text())
        return {"failed": int(data.get("failed", 0)), "last": float(data.get("last", 0.0))}
    return {"failed": 0, "last": 0.0}


def _write_starts(queue: Path, starts: dict) -> None:
    with contextlib.suppress(OSError):
        atomic_write_json(queue / STARTS_FILE, starts)


def _reap_started() -> None:
    """Collect the exit status of fork servers this process started that have ended, so none
    lingers as a zombie."""
    _started[:] = [process for process in _started if process.poll() is None]


def start_server(queue: Path) -> subprocess.Popen:
    """A fork server for ``queue``'s home, detached (its own session: a Ctrl-C of a terminal or a
    studio restart does not reach it). It exits at once when another one holds ``warm.lock``."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [CODE_ROOT, environment.get("PYTHONPATH")]))
    with open(queue / SERVER_LOG, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, str(queue)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=environment, close_fds=True)
    _started.append(process)
    return process


# --------------------------------------------------------------------------- the dispatcher's side


def fork_worker(queue: Path, run_path: Path, lock: int, slots: list[int], env: dict) -> ForkedWorker | None:
    """Ask the fork server to start the worker of ``run_path``, handing it the run lock and slot
    descriptors and ``env`` (the environment a fresh worker would have had). None when there is
    no warm fork server to ask, or it did not answer with a pid: start a fresh worker then."""
    address = queue / SOCKET_NAME
    if not enabled() or len(str(address)) > MAX_SOCKET_PATH or not address.exists():
        return None
    request = {"run_dir": str(run_path), "env": dict(env), "cwd": os.getcwd(), "code": CODE_ROOT,
               "executable": sys.executable, "slots": len(slots)}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(ANSWER_SECONDS)
            connection.connect(str(address))
            socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [lock, *slots])
            answer = _read_line(connection)
    except OSError:
        return None  # no server behind the socket (it died), or it is stuck: go cold
    pid = answer.get("pid") if isinstance(answer, dict) else None
    return ForkedWorker(pid) if isinstance(pid, int) and pid > 0 else None


def _read_line(connection: socket.socket) -> dict | None:
    data = b""
    deadline = time.monotonic() + ANSWER_SECONDS
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    with contextlib.suppress(ValueError):
        return json.loads(data)
    return None
