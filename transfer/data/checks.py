"""Data checks that never load the web server: small ones inline (a few at a time), large ones
in worker processes at low priority, a bounded number at once, with progress.

Reading and decoding every picture of a large upload takes minutes of CPU. Run in the web
server, several sessions doing it at once would starve every page. So a check of more than
``TRANSFER_CHECK_INLINE_MAX_FILES`` files (default 300) or 200 MB runs in its own process
(``python -m transfer.data.checks``), at most ``TRANSFER_CHECK_WORKERS`` (default 1) at once for
all sessions of the server; the process runs at a lower CPU priority with two decoding
threads, reports how far it is in a small progress file the page reads, and hands its report
back as JSON. Small checks run inline, at most
two at a time per server process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from transfer.core.child import run_module
from transfer.data.dataset import check_dataset
from transfer.data.report import Report
from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_json, read_json

INLINE_MAX_FILES_ENV = "TRANSFER_CHECK_INLINE_MAX_FILES"
WORKERS_ENV = "TRANSFER_CHECK_WORKERS"
DEFAULT_INLINE_MAX_FILES = 300
INLINE_MAX_BYTES = 200 * 1024**2
INLINE_AT_ONCE = 2
DECODE_THREADS = 2
WORKER_NICENESS = 10
_KEEP_FINISHED = 16
CHECK_TIMEOUT_SECONDS = 3600
logger = logging.getLogger(__name__)

_inline_slots = threading.BoundedSemaphore(INLINE_AT_ONCE)


def _env_int(name: str, default: int, minimum: int) -> int:
    try:
        return max(minimum, int(os.environ.get(name, "").strip() or default))
    except ValueError:
        return default


def is_large(source: Path | str) -> bool:
    """Whether checking ``source`` is heavy enough for the worker pool (stops counting early)."""
    limit = _env_int(INLINE_MAX_FILES_ENV, DEFAULT_INLINE_MAX_FILES, 0)
    source = Path(source)
    if source.is_file():
        return source.stat().st_size > INLINE_MAX_BYTES
    files = size = 0
    for directory, _, names in os.walk(source):
        for name in names:
            files += 1
            try:
                size += os.stat(os.path.join(directory, name), follow_symlinks=False).st_size
            except OSError:
                continue
            if files > limit or size > INLINE_MAX_BYTES:
                return True
    return False


def check_inline(source: Path | str, val_fraction: float, seed: int) -> Report:
    """A check run in this process, waiting while two others already run here."""
    with _inline_slots:
        return check_dataset(source, val_fraction=val_fraction, seed=seed, workers=DECODE_THREADS)


# --------------------------------------------------------------------------- the worker side


def _worker_main(argv: list[str] | None = None) -> int:
    """``python -m transfer.data.checks SOURCE VAL_FRACTION SEED PROGRESS_FILE REPORT_FILE``."""
    source, val_fraction, seed, progress_file, report_file = (argv if argv is not None else sys.argv[1:])
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        pass

    def progress(done: int, total: int) -> None:
        atomic_write_json(Path(progress_file), {"done": done, "total": total})

    try:
        report = check_dataset(source, val_fraction=float(val_fraction), seed=int(seed), workers=DECODE_THREADS,
                               progress=progress)
    except TransferError as error:
        atomic_write_json(Path(report_file), {"error": str(error)})
        return 2
    atomic_write_json(Path(report_file), report.to_dict())
    return 0


# --------------------------------------------------------------------------- the server side


@dataclass
class CheckJob:
    """A check handed to the pool: ``done()``, ``result()`` (the report) and ``progress()``."""

    future: Future
    progress_file: Path

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Report:
        return self.future.result(timeout)

    def progress(self) -> tuple[int, int] | None:
        """(pictures read, pictures in all), or None while it waits for a free worker."""
        state = read_json(self.progress_file)
        if isinstance(state, dict) and isinstance(state.get("total"), int):
            return int(state.get("done", 0)), state["total"]
        return None


class CheckFailed(TransferError):
    """The check process ended without a report."""


def _run_worker(source: str, val_fraction: float, seed: int, progress_file: Path) -> Report:
    """Check in a fresh interpreter (never a fork, never the web server's own imports) and read its report."""
    report_file = progress_file.with_suffix(".report.json")
    arguments = [str(Path(source).absolute()), str(val_fraction), str(seed), str(progress_file), str(report_file)]
    try:
        done = run_module("transfer.data.checks", arguments, timeout=CHECK_TIMEOUT_SECONDS,
                          env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        data = read_json(report_file)
    except subprocess.TimeoutExpired:
        raise CheckFailed("Checking the pictures took too long and was stopped; use a smaller data set.") from None
    finally:
        report_file.unlink(missing_ok=True)
    if isinstance(data, dict) and data.get("error"):
        raise CheckFailed(str(data["error"]))
    if done.returncode != 0 or not isinstance(data, dict):
        logger.error("data check of %s failed (exit %s): %s", source, done.returncode, done.stderr[-2000:])
        raise CheckFailed("Checking the pictures stopped unexpectedly; reload the page to try again.")
    return Report.from_dict(data)


class CheckPool:
    """The server's bounded pool of check processes and the last checks it ran (per source, split
    and content). A thread per slot waits on its check's process; the process does the work."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or _env_int(WORKERS_ENV, 1, 1)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="transfer-check")
        self._jobs: OrderedDict[tuple, CheckJob] = OrderedDict()
        self._lock = threading.Lock()
        self._progress_dir = Path(tempfile.mkdtemp(prefix="transfer-checks-"))

    def submit(self, source: str, val_fraction: float, seed: int, signature: str) -> CheckJob:
        """The check of this source, split and content: started once, then found again (a
        failed one is started again)."""
        key = (str(source), float(val_fraction), int(seed), signature)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (job.done() and job.future.exception() is not None):
                self._jobs.move_to_end(key)
                return job
            progress_file = self._progress_dir / f"{time.time_ns()}.json"
            future = self._executor.submit(_run_worker, str(source), float(val_fraction), int(seed), progress_file)
            job = self._jobs[key] = CheckJob(future, progress_file)
            self._forget_old()
            return job

    def _forget_old(self) -> None:
        while len(self._jobs) > _KEEP_FINISHED:
            oldest_key, oldest = next(iter(self._jobs.items()))
            if not oldest.done():
                break
            del self._jobs[oldest_key]
            oldest.progress_file.unlink(missing_ok=True)


_shared: CheckPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> CheckPool:
    """The one pool of this server process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = CheckPool()
        return _shared


def check_bounded(source: Path | str, val_fraction: float, seed: int, signature: str) -> Report:
    """The report for ``source``, computed inline when small, else in the pool (waiting for it).

    ``signature`` names the content (see :func:`transfer.data.uploads.content_signature`): a
    changed folder is checked again."""
    if not is_large(source):
        return check_inline(source, val_fraction, seed)
    return shared_pool().submit(str(source), val_fraction, seed, signature).result()


if __name__ == "__main__":
    sys.exit(_worker_main())
