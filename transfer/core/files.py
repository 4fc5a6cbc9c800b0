"""Files: the package's one way to replace a file atomically, to read JSON, and to lock.

Every write that others may read goes through :func:`atomic_path` (a reader sees the old file
or the whole new one, never half), and every lock is an ``flock``, which the OS releases when
the holding process dies, so a crash never leaks one:

- :func:`file_lock` waits for an exclusive lock for the length of a ``with`` block;
- :func:`try_lock` takes one without waiting and hands back the descriptor, for locks held as
  long as a process lives (a worker's run, a queue slot); :func:`lock_with_retry` retries it
  for an instant;
- :func:`lock_is_held` tells whether somebody holds one, without disturbing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

# How long a lock is retried when a probing process holds it for an instant.
LOCK_RETRY_SECONDS = 2.0


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp", durable: bool = True) -> Iterator[Path]:
    """A temporary name beside ``path`` for the block to write; when the block ends without an
    error, it is renamed over ``path`` (readers see either the old file or the whole new one),
    else it is removed. ``durable`` also flushes the file and the rename to disk, so that even a
    crash of the machine leaves one or the other; caches, which can compute a lost entry again,
    skip that cost. The package's one way of replacing a file: every atomic write goes through here."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        if durable:
            _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temp, os.fdopen(os.open(temp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj) -> None:
    """Serialise first (a value JSON cannot hold fails before the old file is touched)."""
    data = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    atomic_write_bytes(path, data)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_is_held(path: Path, *, exclusive_probe: bool = False) -> bool:
    """Whether some process holds a ``flock`` on ``path`` that the probe cannot share. The probe
    takes a shared lock for an instant (it sees exclusive holders, and probes never disturb each
    other), or with ``exclusive_probe`` an exclusive one (it also sees shared holders)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive_probe else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor also drops a lock we just took
    return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` held for the block, waiting for it if need be; released by the OS if
    the process dies. The package's one blocking file lock (:func:`try_lock` is its non-waiting
    counterpart for locks held as long as a process lives)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------- locks held by a process


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``path``, or None if it is taken.
    Keep the descriptor open for as long as the lock should last."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_with_retry(path: Path, seconds: float = LOCK_RETRY_SECONDS) -> int | None:
    """:func:`try_lock`, retried for ``seconds`` (a probe may hold the lock for an instant)."""
    deadline = time.monotonic() + seconds
    while True:
        fd = try_lock(path)
        if fd is not None or time.monotonic() > deadline:
            return fd
        time.sleep(0.02)
