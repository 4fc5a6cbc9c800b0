"""The job manager with real worker processes running the demo job (sleeps, no torch):
queueing, cancelling, a worker killed mid-epoch, resuming, and one queue shared by sessions."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from transfer import cli
from transfer.jobs import BadMaxParallel, JobManager, pid_is_worker, queue_dir
from transfer.runs import RunDir, RunStateError, list_runs

WAIT = 30.0  # generous: other test suites may share the two cores


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")
    monkeypatch.delenv("TRANSFER_MAX_PARALLEL_JOBS", raising=False)
    yield tmp_path
    _stop_leftover_workers(tmp_path)


def _stop_leftover_workers(root) -> None:
    """A failing test must not leave sleeping workers behind."""
    for runs_dir in root.glob("runs*"):
        for run in list_runs(runs_dir):
            pid = run.status().get("pid")
            if isinstance(pid, int) and pid_is_worker(pid):
                os.kill(pid, signal.SIGKILL)


def demo(epochs=3, epoch_seconds=0.3, steps=3, **extra) -> dict:
    return {"job": "demo", "epochs": epochs, "epoch_seconds": epoch_seconds, "steps_per_epoch": steps, **extra}


def kill_worker(pid: int) -> None:
    """SIGKILL a worker and wait until it has fully exited (its locks released). The test
    process started it, so it can collect it."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_two_jobs_run_one_after_the_other_and_the_second_knows_its_place(home):
    manager = JobManager(home / "runs", max_parallel=1)
    first = manager.submit(demo(epochs=4, epoch_seconds=0.5))
    second = manager.submit(demo(epochs=2))

    def second_is_next_while_first_runs():
        waiting = second.status()
        return waiting["state"] == "queued" and waiting.get("queue_position") == 1 and first.state == "running"

    wait_until(second_is_next_while_first_runs, "the second run to be next in line while the first runs")

    assert manager.wait(first, timeout=WAIT)["state"] == "finished"
    assert manager.wait(second, timeout=WAIT)["state"] == "finished"
    a, b = first.status(), second.status()
    assert b["started_at"] >= a["ended_at"]  # never both training at once
    assert (a["epoch"], b["epoch"]) == (4, 2)
    assert "queue_position" not in b
    assert [e["epoch"] for e in second.epoch_history()] == [1, 2]
    assert [e["state"] for e in second.events("end")] == ["finished"]
    assert list((queue_dir() / "entries").iterdir()) == []


def test_two_slots_let_two_jobs_train_together(home):
    manager = JobManager(home / "runs", max_parallel=2)
    runs = [manager.submit(demo(epochs=50)) for _ in range(2)]
    wait_until(lambda: all(r.state == "running" for r in runs), "both runs running at the same time")
    for run in runs:
        manager.cancel(run)
        assert manager.wait(run, timeout=WAIT)["state"] == "cancelled"


def test_cancel_a_running_job_keeps_its_last_finished_epoch(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=50, epoch_seconds=0.3))
    wait_until(lambda: (run.status().get("epoch") or 0) >= 1, "the first epoch")
    manager.cancel(run.id)
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "cancelled"
    assert 1 <= status["epoch"] < 50
    checkpoint = json.loads((run.path / "demo_checkpoint.json").read_text())
    assert checkpoint["epoch"] == status["epoch"]
    assert "kept" in status["message"]
    assert [e["state"] for e in run.events("end")] == ["cancelled"]


def test_cancel_a_queued_job_takes_effect_at_once(home):
    manager = JobManager(home / "runs")
    first = manager.submit(demo(epochs=50))
    second = manager.submit(demo(epochs=2))
    wait_until(lambda: first.state == "running", "the first run to start")
    manager.cancel(second)
    assert second.state == "cancelled"
    assert second.status()["message"] == "Cancelled before it started."
    wait_until(lambda: not pid_is_worker(second.status()["pid"]), "the queued worker to exit")
    assert "started_at" not in second.status()
    assert [e["state"] for e in second.events("end")] == ["cancelled"]
    manager.cancel(first)
    assert manager.wait(first, timeout=WAIT)["state"] == "cancelled"
    assert manager.cancel(first).state == "cancelled"  # cancelling an ended run changes nothing


def test_a_killed_worker_is_interrupted_and_resumes_from_its_last_finished_epoch(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=4, epoch_seconds=0.9, steps=6))
    # Kill it after the first step of the second epoch: mid-epoch, five steps before its end.
    wait_until(lambda: any(e["epoch"] == 2 for e in run.events("step")), "the second epoch")
    pid = run.status()["pid"]
    kill_worker(pid)
    assert run.state == "running"  # nothing was recorded by the dead worker

    restarted = JobManager(home / "runs")  # e.g. the web server after a restart
    status = run.status()
    assert status["state"] == "interrupted"
    assert "resume" in status["message"]
    assert status["epoch"] >= 1
    kept = status["epoch"]

    restarted.resume(run.id)
    assert run.state == "queued"
    final = restarted.wait(run, timeout=WAIT)
    assert final["state"] == "finished" and final["epoch"] == 4
    assert final["resumes"] == 1
    starts = [e["start_epoch"] for e in run.events("info") if "start_epoch" in e]
    assert starts == [1, kept + 1]  # the second attempt did not start from zero
    epochs_logged = [e["epoch"] for e in run.events("epoch")]
    assert epochs_logged == [1, 2, 3, 4]  # each epoch trained exactly once
    assert [e["state"] for e in run.events("end")] == ["interrupted", "finished"]


def test_a_dead_queued_worker_leaves_the_queue(home):
    manager = JobManager(home / "runs")
    first = manager.submit(demo(epochs=50))
    doomed = manager.submit(demo())
    last = manager.submit(demo())
    wait_until(lambda: first.state == "running", "the first run to start")
    wait_until(lambda: last.status().get("queue_position") == 2, "the third run to be second in line")
    kill_worker(doomed.status()["pid"])
    wait_until(lambda: last.status().get("queue_position") == 1, "the third run to move up")
    JobManager(home / "runs")
    assert doomed.state == "interrupted"
    manager.cancel(first)
    assert manager.wait(last, timeout=WAIT)["state"] == "finished"


def test_browser_sessions_with_their_own_runs_folders_share_one_queue(home):
    alice = JobManager(home / "runs-alice", max_parallel=1)
    bob = JobManager(home / "runs-bob", max_parallel=1)
    a = alice.submit(demo(epochs=4, epoch_seconds=0.5))
    wait_until(lambda: a.state == "running", "alice's run to start")
    b = bob.submit(demo(epochs=1))
    wait_until(lambda: b.status().get("queue_position") == 1, "bob's run to wait behind alice's")
    assert [r.id for r in bob.list()] == [b.id]  # bob does not see alice's run
    assert alice.wait(a, timeout=WAIT)["state"] == "finished"
    assert bob.wait(b, timeout=WAIT)["state"] == "finished"
    assert b.status()["started_at"] >= a.status()["ended_at"]


def test_a_crashing_job_fails_with_a_sentence_and_a_log(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=3, epoch_seconds=0.1, fail_at_epoch=2))
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "failed"
    assert status["message"].startswith("Training failed: RuntimeError: demo failure at epoch 2")
    assert "worker.log" in status["message"]
    assert "Traceback" in run.log_path.read_text()
    assert status["epoch"] == 1


def test_an_unknown_job_type_fails_with_the_engine_message(home):
    manager = JobManager(home / "runs")
    run = manager.submit({"job": "teleport"})
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "failed"
    assert status["message"].startswith("This version of Transfer Studio cannot run jobs of type 'teleport'")


def test_resume_refuses_finished_runs_and_bad_parallel_settings_are_explained(home, monkeypatch):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=1, epoch_seconds=0.05))
    manager.wait(run, timeout=WAIT)
    with pytest.raises(RunStateError, match="already finished"):
        manager.resume(run.id)
    monkeypatch.setenv("TRANSFER_MAX_PARALLEL_JOBS", "zero")
    with pytest.raises(BadMaxParallel, match="TRANSFER_MAX_PARALLEL_JOBS"):
        JobManager(home / "runs")
    with pytest.raises(BadMaxParallel):
        JobManager(home / "runs", max_parallel=0)


def test_command_line_runs_cancel_and_resume(home, capsys):
    runs_dir = str(home / "runs")
    manager = JobManager(runs_dir)
    run = manager.submit(demo(epochs=30, epoch_seconds=0.2))
    wait_until(lambda: (run.status().get("epoch") or 0) >= 1, "the first epoch")

    assert cli.main(["cancel", run.id, "--runs-dir", runs_dir]) == 0
    assert "stop" in capsys.readouterr().out
    assert manager.wait(run, timeout=WAIT)["state"] == "cancelled"

    assert cli.main(["runs", "--runs-dir", runs_dir, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["id"] for r in listed["runs"]] == [run.id]
    assert listed["runs"][0]["state"] == "cancelled"

    assert cli.main(["runs", "--runs-dir", runs_dir]) == 0
    table = capsys.readouterr().out
    assert run.id in table and "cancelled" in table

    assert cli.main(["cancel", "../x", "--runs-dir", runs_dir]) == 2
    assert "not a run id" in capsys.readouterr().err

    # Resuming from a run folder path works too; shorten the remaining work first.
    config = dict(run.config, epochs=run.status()["epoch"] + 2, epoch_seconds=0.05)
    (run.path / "config.json").write_text(json.dumps(config))
    assert cli.main(["resume", str(run.path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["state"] == "finished" and result["epoch"] == config["epochs"]
    assert result["id"] == run.id

    assert cli.main(["resume", run.id, "--runs-dir", runs_dir, "--json"]) == 2
    assert "already finished" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_an_active_run_cannot_be_resumed_twice(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=50))
    wait_until(lambda: run.state == "running", "the run to start")
    with pytest.raises(RunStateError, match="already running"):
        manager.resume(run)
    manager.cancel(run)
    manager.wait(run, timeout=WAIT)
    assert isinstance(RunDir(run.path).status()["ended_at"], float)
