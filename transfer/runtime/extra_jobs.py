"""Job types added from outside the engine, for the job-manager tests.

``$TRANSFER_EXTRA_JOBS`` may name an importable module with ``JOBS`` (job type -> function that
trains a ``RunDir``) and, for runs on several processes, ``RANK_MODULES`` (job type -> module
that torchrun starts per rank). The test suite sets it to its demo job (``tests/demo_jobs.py``:
epochs of sleeping, no torch) so that queueing, cancelling, killing and resuming are exercised
in seconds; the installed studio knows only its own job types. Setting it needs the same power
as setting ``PYTHONPATH``: a web visitor cannot.
"""

from __future__ import annotations

import importlib
import os

EXTRA_JOBS_ENV = "TRANSFER_EXTRA_JOBS"


def _module():
    name = os.environ.get(EXTRA_JOBS_ENV, "").strip()
    return importlib.import_module(name) if name else None


def extra_job(job: str):
    """The function of an added job type, or None."""
    module = _module()
    return getattr(module, "JOBS", {}).get(job) if module else None


def extra_rank_module(job: str) -> str | None:
    """The per-rank module of an added job type, or None."""
    module = _module()
    return getattr(module, "RANK_MODULES", {}).get(job) if module else None
