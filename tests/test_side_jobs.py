"""Side jobs (transfer.runtime.side_jobs): a page's helper job kept in a folder, run by a JobManager.

The demo job (tests/demo_jobs.py: epochs of sleeping, no torch) stands in for an audit; the
test writes the result file an audit would write.
"""

from __future__ import annotations

import time

from transfer.analysis.audit import RESULT_FILE
from transfer.core.errors import TransferError
from transfer.runtime.jobs import JobManager
from transfer.runtime.side_jobs import DONE, FAILED, IDLE, RUNNING, SideJob
from transfer.core.files import atomic_write_json


class RefusingManager:
    def submit(self, config):
        raise TransferError("This session's helper jobs are full.")


def test_a_side_job_goes_from_idle_to_running_to_done_and_can_be_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    manager = JobManager(tmp_path / "jobs", max_queued=2)
    job = SideJob(tmp_path / "audit", manager)
    assert job.state == IDLE and job.result() is None and job.details() == {}

    job.start({"job": "demo", "epochs": 50, "epoch_seconds": 0.2, "steps_per_epoch": 2}, source="pictures")
    assert job.state == RUNNING and job.details()["source"] == "pictures"
    job.cancel()
    deadline = time.monotonic() + 30
    while job.run().state not in ("cancelled", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)

    atomic_write_json(job.folder / RESULT_FILE, {"suspects": []})
    assert job.state == DONE and job.result() == {"suspects": []}
    job.forget()
    assert job.state == IDLE


def test_a_refused_side_job_fails_with_the_refusal_as_its_error(tmp_path):
    job = SideJob(tmp_path / "audit", RefusingManager())
    job.start({"job": "audit", "arguments": []})
    assert job.state == FAILED and job.error() == "This session's helper jobs are full."
