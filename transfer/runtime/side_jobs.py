"""Side jobs: the heavy helpers a page asks for (a label audit, a feature map, label
suggestions, the learning-rate finder), run through the machine's queue like training.

A side job is known by its folder. :meth:`SideJob.start` clears the folder, submits the job to
a :class:`~transfer.runtime.jobs.JobManager` (the browser session's helper jobs) and writes
``job.json`` there: which run carries it, and whatever the page wants to remember about it.
The job writes ``progress.json`` while it works and then ``result.json`` or ``error.json``,
into the folder (audits, maps, suggestions) or into its own run folder (the finder). The page
asks the job its :attr:`~SideJob.state`, its :meth:`~SideJob.progress`, and once done its
:meth:`~SideJob.result`; it never reads the files itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from transfer.analysis.audit import ERROR_FILE, PROGRESS_FILE, RESULT_FILE
from transfer.core.errors import TransferError
from transfer.core.runs import ACTIVE_STATES, FINISHED, RunDir
from transfer.core.files import atomic_write_json, read_json

JOB_FILE = "job.json"

IDLE, RUNNING, DONE, FAILED, STOPPED = "idle", "running", "done", "failed", "stopped"


class SideJob:
    """One page helper job, kept in ``folder`` and run by ``manager`` (a JobManager)."""

    def __init__(self, folder: Path | str, manager=None):
        self.folder = Path(folder)
        self.manager = manager

    # ----------------------------------------------------------------- starting and stopping

    def start(self, config: dict, **details) -> None:
        """Queue the job ``config`` (``{"job": ..., ...}``); ``details`` are kept in ``job.json``.
        A refusal (the session's helper jobs are full) becomes the job's error."""
        self.forget()
        try:
            run = self.manager.submit(config)
        except TransferError as error:
            atomic_write_json(self.folder / ERROR_FILE, {"error": str(error)})
            return
        atomic_write_json(self.folder / JOB_FILE, {**details, "run": str(run.path), "started": time.time()})

    def forget(self) -> None:
        """Clear what an earlier job left (its result, error, progress and pointer)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in (RESULT_FILE, ERROR_FILE, PROGRESS_FILE, JOB_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def cancel(self) -> None:
        """Stop the job (a queued one at once, a running one at its next step)."""
        run = self.run()
        if run is not None and self.manager is not None:
            self.manager.cancel(run)

    # ----------------------------------------------------------------- looking

    def details(self) -> dict:
        """What was kept about the job when it started (``job.json``), or {}."""
        job = read_json(self.folder / JOB_FILE, None)
        return job if isinstance(job, dict) else {}

    def run(self) -> RunDir | None:
        """The queued run that carries the job, or None before it was started."""
        path = self.details().get("run")
        return RunDir(path) if path else None

    @property
    def state(self) -> str:
        """``idle`` (never started), ``running`` (or waiting in the queue), ``done``, ``failed``
        or ``stopped`` (its worker died, or it ended without a word)."""
        from transfer.runtime.backends import job_backend

        if self._result_file() is not None:
            return DONE
        if (self.folder / ERROR_FILE).is_file():
            return FAILED
        run = self.run()
        if run is None:
            return IDLE
        if not run.exists():
            return STOPPED
        status = run.status()
        if status["state"] in ACTIVE_STATES and job_backend().alive(run, status):
            return RUNNING
        return STOPPED

    def progress(self) -> dict:
        """``{"phase", "done", "total"}`` as the job last wrote it, or {}."""
        progress = read_json(self.folder / PROGRESS_FILE, None)
        return progress if isinstance(progress, dict) else {}

    def status(self) -> dict:
        """The carrying run's status (its place in the queue, its message), or {}."""
        run = self.run()
        return run.status() if run is not None and run.exists() else {}

    def result(self) -> dict | None:
        """What the job found, once it is done."""
        path = self._result_file()
        return read_json(path, None) if path is not None else None

    def error(self) -> str | None:
        """Why the job failed, in a sentence, or None."""
        stored = read_json(self.folder / ERROR_FILE, None)
        if isinstance(stored, dict) and stored.get("error"):
            return str(stored["error"])
        return self.status().get("message") if self.state == STOPPED else None

    def _result_file(self) -> Path | None:
        if (self.folder / RESULT_FILE).is_file():
            return self.folder / RESULT_FILE
        run = self.run()
        if run is not None and run.state == FINISHED and (run.path / RESULT_FILE).is_file():
            return run.path / RESULT_FILE
        return None
