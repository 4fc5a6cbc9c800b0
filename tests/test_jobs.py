"""The job manager with real worker processes running the demo job (sleeps, no torch):
queueing, one dispatcher that starts workers only when a run leaves the queue, the per-session
limit, cancelling, a worker killed mid-epoch, resuming, a restart, and one queue shared by
sessions."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from waiting import wait_for

from transfer.cli import main as cli
from transfer.runtime import local_queue
from transfer.runtime import launch
from transfer.runtime.jobs import JobManager, SessionQueueFull
from transfer.runtime.local_queue import BadMaxParallel, dispatch, pid_is_worker, queue_dir
from transfer.core.files import lock_with_retry, try_lock
from transfer.core.runs import RunDir, RunStateError, list_runs
from transfer.runtime.worker import UnknownJob, job_function

WAIT = 30.0  # generous: other test suites may share the two cores


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")
    monkeypatch.delenv("TRANSFER_MAX_PARALLEL_JOBS", raising=False)
    monkeypatch.delenv("TRANSFER_MAX_QUEUED", raising=False)
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


def worker_processes(root) -> list[int]:
    """Live worker processes working on runs under ``root`` (their command line names the run)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"transfer.runtime.worker" in cmdline and str(root).encode() in cmdline and pid_is_worker(int(proc.name)):
                found.append(int(proc.name))
    return found


def kill_worker(pid: int) -> None:
    """SIGKILL a worker and wait until it has fully exited (its locks released). The test
    process started it, so it can collect it."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_two_jobs_run_one_after_the_other_and_the_second_knows_its_place(home):
    manager = JobManager(home / "runs", max_parallel=1)
    first = manager.submit(demo(epochs=4, epoch_seconds=0.5))
    second = manager.submit(demo(epochs=2))

    def second_is_next_while_first_runs():
        waiting = second.status()
        return waiting["state"] == "queued" and waiting.get("queue_position") == 1 and first.state == "running"

    wait_for(second_is_next_while_first_runs, "the second run to be next in line while the first runs",
             timeout=WAIT)

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
    wait_for(lambda: all(r.state == "running" for r in runs), "both runs running at the same time", timeout=WAIT)
    for run in runs:
        manager.cancel(run)
        assert manager.wait(run, timeout=WAIT)["state"] == "cancelled"


def test_cancel_a_running_job_keeps_its_last_finished_epoch(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=50, epoch_seconds=0.3))
    wait_for(lambda: (run.status().get("epoch") or 0) >= 1, "the first epoch", timeout=WAIT)
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
    wait_for(lambda: first.state == "running", "the first run to start", timeout=WAIT)
    manager.cancel(second)
    assert second.state == "cancelled"
    assert second.status()["message"] == "Cancelled before it started."
    assert "pid" not in second.status()  # a waiting run never had a process
    assert "started_at" not in second.status()
    assert [e["state"] for e in second.events("end")] == ["cancelled"]
    manager.cancel(first)
    assert manager.wait(first, timeout=WAIT)["state"] == "cancelled"
    assert manager.cancel(first).state == "cancelled"  # cancelling an ended run changes nothing


def test_a_killed_worker_is_interrupted_and_resumes_from_its_last_finished_epoch(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=4, epoch_seconds=0.9, steps=6))
    # Kill it after the first step of the second epoch: mid-epoch, five steps before its end.
    wait_for(lambda: any(e["epoch"] == 2 for e in run.events("step")), "the second epoch", timeout=WAIT)
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


def test_a_run_resumed_while_its_previous_worker_is_still_ending_keeps_its_place_and_starts(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=2, fail_at_epoch=1))
    assert manager.wait(run, timeout=WAIT)["state"] == "failed"
    # Once that worker is gone, the test plays it: a worker that has ended the run but not exited yet.
    ending_worker = lock_with_retry(run.worker_lock_path, WAIT)
    assert ending_worker is not None
    try:
        manager.resume(run)
        dispatch()  # what that worker does on its way out, while it still holds the lock
        assert [entry["run_dir"] for _, entry in local_queue.queue_entries()] == [str(run.path)]
        assert run.state == "queued"
    finally:
        os.close(ending_worker)
    manager.wait(run, timeout=WAIT)  # the demo fails again at the same epoch: enough to see it ran
    assert [e["start_epoch"] for e in run.events("info") if "start_epoch" in e] == [1, 1]
    assert [e["state"] for e in run.events("end")] == ["failed", "failed"]


def test_waiting_runs_have_no_process_until_a_slot_frees(home):
    manager = JobManager(home / "runs", max_parallel=1)
    first = manager.submit(demo(epochs=50))
    waiting = [manager.submit(demo(epochs=1, epoch_seconds=0.1)) for _ in range(3)]
    wait_for(lambda: first.state == "running", "the first run to start", timeout=WAIT)
    assert dispatch() == []  # a dispatcher pass with the slot taken starts nothing
    assert worker_processes(home) == [first.status()["pid"]]
    assert [r.status().get("queue_position") for r in waiting] == [1, 2, 3]
    assert all(r.state == "queued" and "pid" not in r.status() for r in waiting)

    manager.cancel(first)
    wait_for(lambda: waiting[0].state != "queued", "the next run to leave the queue", timeout=WAIT)
    assert waiting[1].status().get("queue_position") == 1
    assert len(worker_processes(home)) <= 2  # the next one, and the first one on its way out
    for run in waiting:
        assert manager.wait(run, timeout=WAIT)["state"] == "finished"
    # A worker writes "finished" before it dispatches the queue and exits: give it that moment.
    wait_for(lambda: worker_processes(home) == [], "the last worker to exit", timeout=15)
    assert list((queue_dir() / "entries").iterdir()) == []


def test_queued_runs_start_after_a_restart_even_when_their_worker_died(home):
    manager = JobManager(home / "runs")
    first = manager.submit(demo(epochs=50))
    second, third = manager.submit(demo(epochs=1, epoch_seconds=0.1)), manager.submit(demo(epochs=1, epoch_seconds=0.1))
    wait_for(lambda: first.state == "running", "the first run to start", timeout=WAIT)
    kill_worker(first.status()["pid"])  # nothing dispatches now: the dead worker cannot
    assert (second.state, third.state) == ("queued", "queued") and worker_processes(home) == []

    restarted = JobManager(home / "runs")  # the web server or a terminal, after a restart
    assert first.state == "interrupted"
    assert restarted.wait(second, timeout=WAIT)["state"] == "finished"
    assert restarted.wait(third, timeout=WAIT)["state"] == "finished"
    assert third.status()["started_at"] >= second.status()["ended_at"]


def test_asking_for_a_run_s_status_moves_the_queue_past_a_dead_worker(home):
    """A page that shows a queued run only asks for its status; that alone moves the queue on."""
    manager = JobManager(home / "runs")
    first = manager.submit(demo(epochs=50))
    second = manager.submit(demo(epochs=1, epoch_seconds=0.1))
    wait_for(lambda: first.state == "running", "the first run to start", timeout=WAIT)
    kill_worker(first.status()["pid"])  # nothing dispatches now: the dead worker cannot
    assert second.state == "queued"

    wait_for(lambda: manager.status(second)["state"] != "queued", "asking for its status to start the second run",
             timeout=WAIT)
    assert manager.status(first)["state"] == "interrupted"  # its worker died: looking says so
    assert manager.wait(second, timeout=WAIT)["state"] == "finished"


def test_a_session_may_have_four_runs_queued_or_running_and_compare_counts_three(home, monkeypatch):
    manager = JobManager(home / "runs")
    runs = [manager.submit(demo(epochs=50)) for _ in range(2)]
    with pytest.raises(SessionQueueFull, match="starts 3 runs, but this session already has 2 of its 4"):
        manager.submit_all([demo(), demo(), demo()])  # what "Compare the three methods" does
    assert len(list_runs(home / "runs")) == 2  # all or nothing
    runs += manager.submit_all([demo(epochs=50), demo(epochs=50)])
    with pytest.raises(SessionQueueFull, match="already has 4 runs queued or running, the most it may have at once is 4"):
        manager.submit(demo())
    other_session = JobManager(home / "runs-other")
    extra = other_session.submit(demo(epochs=1, epoch_seconds=0.05))  # the limit is per session
    monkeypatch.setenv("TRANSFER_MAX_QUEUED", "5")
    runs.append(JobManager(home / "runs").submit(demo(epochs=50)))
    manager.cancel(runs[-1])
    finished_or_cancelled = runs[0]
    manager.cancel(finished_or_cancelled)
    manager.wait(finished_or_cancelled, timeout=WAIT)
    manager.submit(demo(epochs=1, epoch_seconds=0.05))  # room again after one ended
    with pytest.raises(SessionQueueFull):
        manager.resume(finished_or_cancelled)  # resuming counts too
    monkeypatch.setenv("TRANSFER_MAX_QUEUED", "none")
    with pytest.raises(BadMaxParallel, match="TRANSFER_MAX_QUEUED"):
        JobManager(home / "runs")
    for run in list_runs(home / "runs"):
        manager.cancel(run)
    other_session.wait(extra, timeout=WAIT)


def test_the_command_line_refuses_a_run_past_the_limit_with_a_sentence(home, monkeypatch, capsys, tiny_dataset):
    runs_dir = home / "runs"
    waiting = JobManager(runs_dir).submit(demo(epochs=50))
    monkeypatch.setenv("TRANSFER_MAX_QUEUED", "1")
    assert cli.main(["train", str(tiny_dataset), "--runs-dir", str(runs_dir), "--no-wait", "--json"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert error.startswith("This session already has 1 runs queued or running, the most it may have at once is 1")
    assert len(list_runs(runs_dir)) == 1
    JobManager(runs_dir).cancel(waiting)


def test_many_processes_dispatching_at_once_start_each_run_once(home):
    manager = JobManager(home / "runs", max_parallel=2)
    runs = manager.submit_all([demo(epochs=1, epoch_seconds=0.2) for _ in range(4)])
    import threading

    callers = [threading.Thread(target=dispatch) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    for run in runs:
        assert manager.wait(run, timeout=WAIT)["state"] == "finished"
        assert [e["state"] for e in run.events("end")] == ["finished"]
        assert len([e for e in run.events("info") if "start_epoch" in e]) == 1  # trained once


def test_browser_sessions_with_their_own_runs_folders_share_one_queue(home):
    alice = JobManager(home / "runs-alice", max_parallel=1)
    bob = JobManager(home / "runs-bob", max_parallel=1)
    a = alice.submit(demo(epochs=4, epoch_seconds=0.5))
    wait_for(lambda: a.state == "running", "alice's run to start", timeout=WAIT)
    b = bob.submit(demo(epochs=1))
    wait_for(lambda: b.status().get("queue_position") == 1, "bob's run to wait behind alice's", timeout=WAIT)
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
    wait_for(lambda: (run.status().get("epoch") or 0) >= 1, "the first epoch", timeout=WAIT)

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
    wait_for(lambda: run.state == "running", "the run to start", timeout=WAIT)
    with pytest.raises(RunStateError, match="already running"):
        manager.resume(run)
    manager.cancel(run)
    manager.wait(run, timeout=WAIT)
    assert isinstance(RunDir(run.path).status()["ended_at"], float)


def test_a_page_never_waits_for_another_process_that_is_dispatching(home):
    manager = JobManager(home / "runs")
    busy = try_lock(queue_dir() / "dispatch.lock")  # as a worker would, starved of CPU mid-pass
    submitted = []
    page = threading.Thread(target=lambda: submitted.append(manager.submit(demo(epochs=1, epoch_seconds=0.05))))
    page.start()
    page.join(timeout=WAIT)  # returns at once unless submit waits for the lock, which is never let go here
    assert not page.is_alive(), "submit waited for the dispatch lock"
    run = submitted[0]
    assert run.state == "queued"
    assert (queue_dir() / "dispatch.wanted").exists()  # the note the holder reads after its pass
    os.close(busy)
    assert [r.id for r in dispatch()] == [run.id]
    assert manager.wait(run, timeout=WAIT)["state"] == "finished"


def test_workers_yield_the_cpu_and_use_a_bounded_number_of_threads(home, monkeypatch):
    monkeypatch.setenv("TRANSFER_WORKER_THREADS", "1")
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=1, epoch_seconds=0.05))
    assert manager.wait(run, timeout=WAIT)["state"] == "finished"
    started = next(e for e in run.events("info") if "start_epoch" in e)
    assert started["nice"] >= 10 and started["threads"] == "1"


class _EndedChild:
    """A finished worker whose poll takes a moment, as a real one's can under load."""

    def poll(self):
        time.sleep(0.001)
        return 0


def test_page_threads_reaping_the_same_children_at_once_never_fail(monkeypatch):
    monkeypatch.setattr(local_queue, "_children", [_EndedChild() for _ in range(200)])
    start, failures = threading.Barrier(4), []

    def reap():
        start.wait()
        try:
            local_queue._reap_children()
        except Exception as error:  # without the lock: ValueError, list.remove(x): x not in list
            failures.append(error)

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and local_queue._children == []


def test_the_engine_itself_knows_no_demo_job(monkeypatch):
    monkeypatch.delenv("TRANSFER_EXTRA_JOBS")
    with pytest.raises(UnknownJob, match="cannot run jobs of type 'demo'"):
        job_function({"job": "demo"})
    assert not launch.is_distributed({"job": "demo", "nproc_per_node": 2})
