"""Jobs on a Ray cluster (transfer.runtime.backends): a local head on 127.0.0.1 takes the runs.

The cluster tests are skipped where ``ray`` is not installed (``pip install '.[cluster]'``); the
entrypoint, resources and environment tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

import pytest

from raycluster import start_head
from waiting import wait_for
from transfer.core.runs import CANCELLED, FAILED, FINISHED, INTERRUPTED, RUNNING, RunDir
from transfer.runtime import backends, jobs
from transfer.runtime.backends import (RAY_ADDRESS_ENV, RAY_PYTHON_ENV, JobResources, JobStartError, LocalQueue,
    RayCluster, job_backend, job_environment, job_resources, submission_id, worker_entrypoint)
from transfer.runtime.jobs import JobManager
from transfer.runtime.worker import folder_problem

WAIT = 180.0  # a Ray job starts in seconds, but the two cores are shared with other test suites
SMALL = dict(image_size=32, device="cpu", epochs=2, batch_size=8)


def demo(epochs=3, epoch_seconds=0.3, steps=3, **extra) -> dict:
    return {"job": "demo", "epochs": epochs, "epoch_seconds": epoch_seconds, "steps_per_epoch": steps, **extra}


def features_config(data: Path, **overrides) -> dict:
    from transfer.training.config import TrainConfig

    return TrainConfig.for_method("features", dataset=str(data), **{**SMALL, **overrides}).to_dict()


# --------------------------------------------------------------------------- without a cluster


def test_the_entrypoint_quotes_a_run_folder_with_a_space_and_a_quote(tmp_path, monkeypatch):
    monkeypatch.delenv(RAY_PYTHON_ENV, raising=False)
    folder = tmp_path / "it's a run; rm -rf ~"
    command = worker_entrypoint(folder)
    assert shlex.split(command) == [sys.executable, "-m", "transfer.runtime.worker", str(folder), "--on-cluster"]
    monkeypatch.setenv(RAY_PYTHON_ENV, "/opt/studio env/bin/python")
    assert shlex.split(worker_entrypoint(folder))[0] == "/opt/studio env/bin/python"


def test_the_back_end_follows_the_environment(monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert isinstance(job_backend(), LocalQueue) and job_backend().label == "this machine"
    monkeypatch.setenv(RAY_ADDRESS_ENV, "http://head.example:8265")
    chosen = job_backend()
    assert isinstance(chosen, RayCluster) and chosen.kind == "ray"
    assert "head.example" not in chosen.label  # the address never reaches a page


def test_a_job_asks_for_one_gpu_per_process_of_a_cuda_run(monkeypatch):
    monkeypatch.delenv("TRANSFER_RAY_CPUS", raising=False)
    assert job_resources({"device": "cuda", "nproc_per_node": 2}) == JobResources(cpus=2, gpus=2)
    assert job_resources({"device": "cpu", "nproc_per_node": 2}) == JobResources(cpus=2, gpus=0)
    assert job_resources({"device": "cuda", "job": "estimate"}) == JobResources(cpus=1, gpus=0)
    monkeypatch.setenv("TRANSFER_RAY_CPUS", "4")
    assert job_resources({"device": "cpu"}) == JobResources(cpus=4, gpus=0)
    assert JobResources(1, 1).machine_wanted() == "a machine with 1 GPU"
    assert JobResources(2, 0).machine_wanted() == "a machine with 2 free CPUs"


def test_the_job_environment_carries_the_settings_but_no_password(monkeypatch):
    monkeypatch.setenv("TRANSFER_PASSWORD", "hunter2")
    monkeypatch.setenv("TRANSFER_MAX_QUEUED", "7")
    environment = job_environment(JobResources(cpus=3, gpus=0))
    assert "TRANSFER_PASSWORD" not in environment and environment["TRANSFER_MAX_QUEUED"] == "7"
    assert environment["TRANSFER_WORKER_THREADS"] == environment["OMP_NUM_THREADS"] == "3"
    assert environment["PYTHONPATH"] == os.environ["PYTHONPATH"]


def test_a_resume_gets_a_job_id_of_its_own(tmp_path):
    run = RunDir.create(tmp_path / "runs", demo())
    assert submission_id(run, {}) == run.id
    assert submission_id(run, {"resumes": 2}) == f"{run.id}-r2"


def test_a_node_that_cannot_write_the_run_folder_says_where_and_which(tmp_path):
    missing = tmp_path / "not mounted" / "run"
    sentence = folder_problem(missing)
    assert sentence.startswith(backends.UNWRITABLE_FOLDER) and str(missing) in sentence
    assert socket.gethostname() in sentence
    unwritable = Path("/proc/self")  # not writable even for root
    assert str(unwritable) in folder_problem(unwritable)
    assert folder_problem(tmp_path) is None
    assert not list(tmp_path.iterdir())  # the check leaves nothing behind


def test_the_machine_queue_lists_what_it_runs_and_what_waits(tmp_path, monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    first, second = manager.submit(demo(epochs=30, epoch_seconds=1.0)), manager.submit(demo())
    queue = job_backend()
    wait_for(lambda: queue.overview()["running"] == 1, "the first run to start", timeout=WAIT)
    assert queue.overview() == {"kind": "local", "label": "this machine", "waiting": 1, "running": 1,
                                "reachable": True}
    rows = {row["run_id"]: row for row in queue.jobs()}
    assert rows[first.id]["state"] == "running" and rows[first.id]["node"] == socket.gethostname()
    assert rows[second.id]["state"] == "waiting" and rows[second.id]["job"] == "demo"
    assert rows[second.id]["waiting_for"] == "a free training slot"
    assert first.status()["node"] == socket.gethostname()
    [machine] = queue.nodes()
    assert machine["alive"] and machine["cpus"] >= 1 and machine["memory_bytes"] > 0
    manager.cancel(second)
    manager.cancel(first)
    assert manager.wait(first, timeout=WAIT)["state"] == CANCELLED
    wait_for(lambda: queue.overview()["running"] == 0, "the worker's note to go", timeout=WAIT)


# --------------------------------------------------------------------------- on a local cluster


@pytest.fixture(scope="session")
def ray_address():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install '.[cluster]'): the Ray back end cannot be tried")
    address, stop = start_head(num_cpus=2)
    try:
        yield address
    finally:
        stop()


@pytest.fixture
def on_ray(ray_address, monkeypatch):
    """Jobs go to the local cluster; the Ray client to look at them."""
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_address)
    return JobSubmissionClient(ray_address)


def test_a_cluster_that_does_not_answer_fails_the_run_with_a_sentence(tmp_path, monkeypatch):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install '.[cluster]'): the Ray back end cannot be tried")
    from raycluster import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    monkeypatch.setenv(RAY_ADDRESS_ENV, address)
    manager = JobManager(tmp_path / "runs")
    with pytest.raises(JobStartError, match="does not answer") as refused:
        manager.submit(demo())
    assert address not in str(refused.value) and "127.0.0.1" not in str(refused.value)
    [run] = manager.list()
    assert run.state == FAILED and run.status()["message"] == str(refused.value)
    assert job_backend().overview()["reachable"] is False


def ray_status(client, run: RunDir) -> str:
    return client.get_job_status(run.status()["ray_job"]).value


def test_a_features_run_through_ray_matches_the_local_queue(tmp_path, tiny_dataset, monkeypatch, ray_address):
    local = JobManager(tmp_path / "local").submit(features_config(tiny_dataset))
    local_final = JobManager(tmp_path / "local").wait(local, timeout=WAIT)
    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_address)
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(features_config(tiny_dataset))
    final = manager.wait(run, timeout=WAIT)
    assert local_final["state"] == final["state"] == FINISHED
    assert final["val_accuracy"] == local_final["val_accuracy"]
    assert final["best_val_accuracy"] == local_final["best_val_accuracy"]
    assert final["ray_job"] == run.id and final["node"] == socket.gethostname()
    assert "waiting_for" not in final or final["waiting_for"] is None


def test_two_processes_train_one_run_inside_one_ray_job(tmp_path, tiny_dataset, on_ray):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(features_config(tiny_dataset, nproc_per_node=2))
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == FINISHED, final.get("message")
    assert run.events("info")[0]["world_size"] == 2  # torchrun's two gloo ranks
    info = on_ray.get_job_info(run.id)
    assert info.metadata["cpus"] == "2" and info.metadata["gpus"] == "0"
    wait_for(lambda: ray_status(on_ray, run) == "SUCCEEDED", "the job to end", timeout=WAIT)


def test_cancel_stops_a_running_run_at_its_next_step(tmp_path, on_ray):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(epochs=30, epoch_seconds=1.0))
    wait_for(lambda: run.status().get("epoch", 0) >= 1, "the first epoch on the cluster", timeout=WAIT)
    manager.cancel(run)
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == CANCELLED and 1 <= final["epoch"] < 30
    wait_for(lambda: ray_status(on_ray, run) == "SUCCEEDED", "the job to end by itself", timeout=WAIT)


def test_a_cancel_the_run_does_not_answer_is_enforced_with_stop_job(tmp_path, on_ray, monkeypatch):
    monkeypatch.setattr(jobs, "CANCEL_ANSWER_SECONDS", 1.0)
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(epochs=2, epoch_seconds=120.0, steps=1))  # one long step: deaf to cancels
    wait_for(lambda: run.state == RUNNING, "the run to start on the cluster", timeout=WAIT)
    manager.cancel(run)
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == CANCELLED and final["message"].startswith("Cancelled")
    assert ray_status(on_ray, run) == "STOPPED"


def test_a_job_that_asks_for_a_gpu_nobody_has_waits_and_can_be_cancelled(tmp_path, on_ray):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(device="cuda"))

    def waiting():
        manager.check(run)
        return run.status().get("waiting_for")

    assert wait_for(waiting, "the run to say what it waits for", timeout=WAIT) == "a machine with 1 GPU"
    assert run.status()["message"] == "Waiting for a machine with 1 GPU."
    assert ray_status(on_ray, run) == "PENDING"
    cluster = job_backend()
    assert cluster.overview()["waiting"] == 1
    assert [row["waiting_for"] for row in cluster.jobs() if row["run_id"] == run.id] == ["a machine with 1 GPU"]
    manager.cancel(run)
    assert run.state == CANCELLED and run.status()["message"] == "Cancelled before it started."
    # Ray cannot stop a job before it starts: the studio counts it as cancelled from now on.
    assert cluster.overview()["waiting"] == 0
    assert [row["state"] for row in cluster.jobs() if row["run_id"] == run.id] == ["cancelled"]
    assert not manager.check(run) and run.state == CANCELLED


@pytest.mark.parametrize("how", ["stop_job", "kill"])
def test_a_job_stopped_from_outside_leaves_the_run_interrupted_and_resume_finishes_it(tmp_path, on_ray, how):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(epochs=3, epoch_seconds=3.0))
    wait_for(lambda: run.status().get("epoch", 0) >= 1, "the first epoch on the cluster", timeout=WAIT)
    if how == "stop_job":
        on_ray.stop_job(run.id)  # as an operator would
    else:
        os.kill(run.status()["pid"], signal.SIGKILL)  # as a node that is lost takes its processes
    wait_for(lambda: manager.check(run) or run.state == INTERRUPTED, "the run to be marked", timeout=WAIT)
    status = run.status()
    said = "Ray says stopped" if how == "stop_job" else "Ray says failed"
    assert status["state"] == INTERRUPTED and said in status["message"], status["message"]
    manager.resume(run)
    assert run.status()["ray_job"] == f"{run.id}-r1"
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == FINISHED and final["epoch"] == 3
    starts = [event["start_epoch"] for event in run.events("info") if "start_epoch" in event]
    assert starts[0] == 1 and starts[-1] >= 2  # the resume continued after the last finished epoch


def test_a_node_without_the_run_folders_fails_the_run_with_its_sentence(tmp_path, on_ray, monkeypatch):
    elsewhere = tmp_path / "not mounted here"
    # As if the node mounted the run folders somewhere else: the job gets a path it does not have.
    monkeypatch.setattr(backends, "worker_entrypoint", lambda path: backends.shlex.join(
        [sys.executable, "-m", "transfer.runtime.worker", str(elsewhere / Path(path).name), "--on-cluster"]))
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo())
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == FAILED
    assert final["message"].startswith(backends.UNWRITABLE_FOLDER) and str(elsewhere) in final["message"]
    assert socket.gethostname() in final["message"]


def test_the_cluster_lists_its_node_and_the_studio_jobs(tmp_path, on_ray):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(epochs=1))
    assert manager.wait(run, timeout=WAIT)["state"] == FINISHED
    cluster = job_backend()
    nodes = cluster.nodes()
    assert len(nodes) == 1 and nodes[0]["alive"] and nodes[0]["cpus"] == 2 and nodes[0]["gpus"] == 0
    # Ray learns that the job ended a moment after its worker wrote the run's end and exited.
    rows = wait_for(lambda: (lambda rows: rows if rows[run.id]["state"] == "finished" else None)(
        {row["run_id"]: row for row in cluster.jobs()}), "Ray to say the job finished", timeout=WAIT)
    assert rows[run.id]["job"] == "demo"
    assert rows[run.id]["node"] == nodes[0]["node"]
    assert set(cluster.overview()) >= {"kind", "label", "waiting", "running"}


def test_a_time_estimate_the_configure_page_asks_for_runs_as_a_ray_job(on_ray):
    """The studio's helper jobs take the same way as training: here the speed measurement."""
    from transfer.runtime.estimate import request_measurement, stored_forward_seconds

    job = request_measurement("efficientnet_lite0", 64)
    assert JobManager(job.path.parent).wait(job, timeout=WAIT)["state"] == FINISHED
    assert job.status()["ray_job"] == job.id
    assert on_ray.get_job_info(job.id).metadata["job_type"] == "estimate"
    assert stored_forward_seconds("efficientnet_lite0", 64) > 0


def test_a_failed_ray_job_leaves_its_traceback_in_the_run_folder_s_worker_log(tmp_path, on_ray):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(demo(epochs=2, fail_at_epoch=1))
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == FAILED and str(run.log_path) in status["message"]
    assert "RuntimeError: demo failure at epoch 1" in run.log_path.read_text()
