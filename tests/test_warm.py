"""The warm worker: while a studio holds the studio lock, runs start as forks of one fork server.

Most tests run the fork server without its warm-up (``TRANSFER_WARM_PRELOAD=none``) and fork
demo jobs (sleeps, no torch), so they check the queue's behaviour through forks in seconds:
the worker is the fork server's child, keeps the nice level and thread count, a killed fork is
interrupted and resumes, a dead fork server comes back and the run starts cold meanwhile, and
the fork server leaves when the studio does. One test warms up for real and trains a features
run in a fork (torch's threads set up after the fork).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
from pathlib import Path

import pytest

from waiting import wait_for

from transfer.core import machine
from transfer.runtime import warm
from transfer.runtime.jobs import JobManager
from transfer.runtime.local_queue import pid_is_worker, queue_dir
from transfer.core.runs import list_runs

WAIT = 60.0  # the two cores are shared with other test suites


@pytest.fixture
def studio(tmp_path, monkeypatch):
    """A stand-in studio: this test holds the studio lock (as a studio server process does) and
    a fork server without warm-up runs for it. Yields the fork server's pid."""
    monkeypatch.setenv("TRANSFER_WARM_PRELOAD", "none")
    monkeypatch.delenv("TRANSFER_MAX_PARALLEL_JOBS", raising=False)
    monkeypatch.delenv(warm.WARM_ENV, raising=False)
    lock = hold_studio_lock()
    try:
        yield wait_for_server()
    finally:
        os.close(lock)
        stop_everything(tmp_path)


def hold_studio_lock() -> int:
    fd = os.open(queue_dir() / warm.STUDIO_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    warm.keep_alive(queue_dir())
    return fd


def wait_for_server(timeout: float = WAIT, other_than: int | None = None) -> int:
    """The pid of the fork server once it listens (a new one, when ``other_than`` is given)."""
    def listening():
        pid = server_pid()
        return pid if pid and pid != other_than and _listening(pid) else None

    return wait_for(listening, "the fork server to listen", timeout=timeout, interval=0.1)


def server_pid() -> int | None:
    """The newest fork server of this test's queue that is alive, as its log names it."""
    log = queue_dir() / warm.SERVER_LOG
    pids = re.findall(r"fork server (\d+) warming up", log.read_text()) if log.exists() else []
    pid = int(pids[-1]) if pids else None
    return pid if pid and Path(f"/proc/{pid}").exists() and not _zombie(pid) else None


def _listening(pid: int) -> bool:
    text = (queue_dir() / warm.SERVER_LOG).read_text()
    return "listening" in text.split(f"fork server {pid} warming up", 1)[-1]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def stop_everything(root: Path) -> None:
    """No sleeping worker or fork server may outlive its test."""
    for runs_dir in root.glob("runs*"):
        for run in list_runs(runs_dir):
            pid = run.status().get("pid")
            if isinstance(pid, int) and pid_is_worker(pid):
                os.kill(pid, signal.SIGKILL)
    pid = server_pid()
    if pid:
        os.kill(pid, signal.SIGKILL)


def demo(epochs=2, epoch_seconds=0.3, **extra) -> dict:
    return {"job": "demo", "epochs": epochs, "epoch_seconds": epoch_seconds, "steps_per_epoch": 3, **extra}


def first_event(run, kind: str) -> dict:
    return next(event for event in run.events() if event.get("type") == kind)


def test_a_run_started_while_a_studio_runs_is_a_fork_of_the_warm_server(tmp_path, studio):
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    run = manager.submit(demo())
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "finished", status
    assert parent_of(status["pid"]) in (studio, 1) or not Path(f"/proc/{status['pid']}").exists()
    started = first_event(run, "info")
    assert started["nice"] >= 10  # the queue's nice level holds in a fork too
    assert started["threads"] == str(machine.cpu_cores())  # the slot's share of the cores, as a fresh worker
    assert "forked worker" in (queue_dir() / warm.SERVER_LOG).read_text()
    assert run.log_path.read_text().count("running") == 1


def test_the_forked_worker_is_the_fork_servers_child_while_it_trains(tmp_path, studio):
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    run = manager.submit(demo(epochs=20, epoch_seconds=0.5))
    pid = wait_for(lambda: run.status().get("state") == "running" and run.status().get("pid"), "the run to start",
                   timeout=WAIT)
    assert parent_of(pid) == studio
    assert pid_is_worker(pid)
    manager.cancel(run)
    assert manager.wait(run, timeout=WAIT)["state"] == "cancelled"


def test_a_killed_fork_leaves_the_run_interrupted_and_it_resumes(tmp_path, studio):
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    run = manager.submit(demo(epochs=4, epoch_seconds=1.0))
    wait_for(lambda: run.status().get("epoch", 0) >= 1, "the first epoch", timeout=WAIT)
    os.kill(run.status()["pid"], signal.SIGKILL)
    wait_for(lambda: manager.check(run) or run.state == "interrupted", "the run to be interrupted", timeout=WAIT)
    assert run.state == "interrupted"
    manager.resume(run)
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "finished"
    assert first_event(run, "info")["start_epoch"] == 1
    resumed = [e for e in run.events() if e.get("type") == "info" and e.get("start_epoch", 1) > 1]
    assert resumed, "the resumed run started after its last finished epoch"


def test_a_dead_fork_server_comes_back_and_runs_start_cold_meanwhile(tmp_path, studio):
    manager = JobManager(tmp_path / "runs", max_parallel=2)
    training = manager.submit(demo(epochs=30, epoch_seconds=0.5))  # a fork that outlives its server
    wait_for(lambda: training.status().get("state") == "running", "the forked run to start", timeout=WAIT)
    os.kill(studio, signal.SIGKILL)
    wait_for(lambda: not warm.server_alive(queue_dir()), "the fork server to be gone", timeout=WAIT)
    run = manager.submit(demo(epochs=1))
    assert manager.wait(run, timeout=WAIT)["state"] == "finished"
    replacement = wait_for_server(other_than=studio)
    assert replacement not in (studio, training.status()["pid"])
    assert training.state == "running"  # the fork of the old server trains on
    manager.cancel(training)
    assert manager.wait(training, timeout=WAIT)["state"] == "cancelled"


def test_the_fork_server_leaves_with_the_last_studio(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_WARM_PRELOAD", "none")
    lock = hold_studio_lock()
    try:
        pid = wait_for_server()
    finally:
        os.close(lock)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or parent_of(pid) == -1 or _zombie(pid),
             "the fork server to exit", timeout=WAIT)
    assert not warm.server_alive(queue_dir())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_without_a_studio_runs_start_cold_and_no_fork_server_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_WARM_PRELOAD", "none")
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    run = manager.submit(demo(epochs=1))
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "finished"
    assert not warm.server_alive(queue_dir())
    assert not (queue_dir() / warm.SOCKET_NAME).exists()


def test_a_request_from_other_code_is_refused():
    from transfer.runtime.warm_server import refuse

    fine = {"run_dir": "/x", "code": warm.CODE_ROOT, "executable": __import__("sys").executable, "slots": 1}
    assert refuse(fine, [3, 4]) == ""
    assert "other code" in refuse({**fine, "code": "/elsewhere"}, [3, 4])
    assert "lock" in refuse(fine, [3])
    assert refuse("nonsense", []) == "not a fork request"


def test_a_features_run_trains_in_a_fork_of_the_warmed_up_server(tmp_path, monkeypatch, tiny_dataset):
    """The real warm-up (torch, timm, the bundled backbones) then a real features run in a fork,
    with two threads: torch's thread pool is set up after the fork, so the run finishes."""
    monkeypatch.setenv("TRANSFER_WORKER_THREADS", "2")
    lock = hold_studio_lock()
    try:
        server = wait_for_server(timeout=300)
        from transfer.training.config import TrainConfig
        from transfer.data.dataset import load_dataset

        dataset = load_dataset(tiny_dataset, val_fraction=0.3)
        config = TrainConfig.for_method("features", dataset=dataset.to_dict(), epochs=2, image_size=64)
        manager = JobManager(tmp_path / "runs", max_parallel=1)
        run = manager.submit(config.to_dict())
        status = manager.wait(run, timeout=300)
        assert status["state"] == "finished", run.log_path.read_text()[-2000:]
        assert parent_of(status["pid"]) in (server, 1, -1)
        assert "Training on cpu (2 threads)" in first_event(run, "info")["message"]
        assert (run.path / "model.safetensors").is_file()
    finally:
        os.close(lock)
        stop_everything(tmp_path)
