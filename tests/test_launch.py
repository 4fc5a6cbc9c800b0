"""Distributed runs from the launching side: the torchrun settings of a run (checked, with
sentences), the torchrun command line, the device slots a run takes, the `transfer train`
flags, and the worker running real torchrun launches of demo ranks (``tests/demo_ranks.py``,
no torch in the ranks): finishing, cancelling, a killed rank and a killed worker, each
leaving a run that resumes after its last finished epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waiting import wait_for
from transfer.cli import main as cli
from transfer.cli.train import train_result
from transfer.runtime import launch
from transfer.core import machine
from transfer.training.config import ConfigError, TrainConfig
from transfer.runtime.jobs import JobManager
from transfer.runtime.local_queue import dispatch, free_slot_count, slots_needed, try_take_slots
from transfer.core.runs import RunDir, list_runs

WAIT = 90.0  # torchrun imports torch: seconds on two busy cores


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRANSFER_MAX_PARALLEL_JOBS", raising=False)
    monkeypatch.delenv("TRANSFER_MAX_QUEUED", raising=False)
    yield tmp_path
    for pid in launched_processes(tmp_path) + launched_processes(tmp_path, b"demo_ranks"):  # no ranks left behind
        with_suppressed_kill(pid)


def with_suppressed_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launched_processes(root: Path, marker: bytes = b"transfer.") -> list[int]:
    """Live processes (workers, torchrun, ranks) whose command line names a run under ``root``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and str(root).encode() in cmdline and state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def rank_pid(root: Path, rank: int) -> int | None:
    for pid in launched_processes(root, b"demo_ranks"):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def demo(epochs=3, epoch_seconds=0.6, steps=3, **extra) -> dict:
    return {"job": "demo", "epochs": epochs, "epoch_seconds": epoch_seconds, "steps_per_epoch": steps,
            "nproc_per_node": 2, **extra}


# --------------------------------------------------------------------------- settings


def test_world_size_is_written_and_read_back(tiny_dataset, monkeypatch):
    monkeypatch.setattr(machine, "cpu_cores", lambda: 8)
    config = TrainConfig.for_method("finetune", dataset=str(tiny_dataset), device="cpu", nproc_per_node=2,
                                    nnodes=3, node_rank=2, master_addr="node0.lan", master_port=29500)
    saved = config.to_dict()
    assert saved["world_size"] == 6 and saved["nproc_per_node"] == 2 and saved["master_port"] == 29500
    again = TrainConfig.from_dict(json.loads(json.dumps(saved)))
    assert again == config and again.world_size == 6
    assert TrainConfig.for_method("features", dataset="x").to_dict()["world_size"] == 1


@pytest.mark.parametrize("settings, words", [
    ({"nproc_per_node": 0}, "Training processes per machine (nproc per node) must be a whole number from 1 to 256"),
    ({"nnodes": 0}, "The number of machines (nnodes) must be a whole number from 1"),
    ({"nnodes": 2, "node_rank": 2, "master_port": 29500}, "from 0 to 1 (0 on the machine at the master address)"),
    ({"node_rank": -1}, "among the 1 machines"),
    ({"master_port": 70000}, "Master port (0: any free port) must be a whole number from 0 to 65535, not 70000"),
    ({"master_addr": "node 0; rm -rf"}, "host name or IP address of machine 0"),
    ({"nnodes": 2}, "give the master port (for example 29500), the same on every machine"),
    ({"nnodes": 4, "master_port": 29500, "batch_size": 2}, "must be at least 4"),
    ({"nproc_per_node": 2, "device": "mps"}, "not on Apple's MPS device"),
])
def test_bad_distributed_settings_are_refused_with_a_sentence(settings, words):
    with pytest.raises(ConfigError) as refused:
        TrainConfig.for_method("finetune", dataset="pictures", **settings)
    assert words in str(refused.value)


def test_processes_fit_the_gpus_of_a_cuda_run_and_the_cores_of_a_cpu_run(monkeypatch):
    monkeypatch.setattr(machine, "gpu_count", lambda: 2)
    monkeypatch.setattr(machine, "cpu_cores", lambda: 4)
    assert TrainConfig.for_method("finetune", dataset="d", nproc_per_node=2).world_size == 2  # auto: the GPUs
    with pytest.raises(ConfigError, match=r"This machine has 2 GPUs, so at most 2 training processes fit on it "
                                          r"\(one per GPU\), not 3; choose 2 or fewer, or the cpu device"):
        TrainConfig.for_method("finetune", dataset="d", nproc_per_node=3)
    assert TrainConfig.for_method("finetune", dataset="d", nproc_per_node=4, device="cpu").world_size == 4
    with pytest.raises(ConfigError, match="This machine has 4 CPU cores, so at most 4 training processes"):
        TrainConfig.for_method("finetune", dataset="d", nproc_per_node=5, device="cpu")
    monkeypatch.setattr(machine, "gpu_count", lambda: 0)
    with pytest.raises(ConfigError, match="No CUDA GPU is visible"):
        TrainConfig.for_method("finetune", dataset="d", nproc_per_node=2, device="cuda")


def test_torchrun_command_for_one_machine_and_for_node_1_of_two(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_cores", lambda: 8)
    one = TrainConfig.for_method("finetune", dataset="d", device="cpu", nproc_per_node=4)
    command = launch.torchrun_command(tmp_path / "run", one)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == ["--nproc-per-node", "4", "--standalone", "--max-restarts", "0",
                           "-m", "transfer.training.distributed", str(tmp_path / "run")]
    two = TrainConfig.for_method("finetune", dataset="d", device="cpu", nproc_per_node=2, nnodes=2, node_rank=1,
                                 master_addr="10.0.0.5", master_port=29500)
    assert launch.torchrun_command(tmp_path / "run", two.to_dict())[3:] == [
        "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.5",
        "--master-port", "29500", "--max-restarts", "0", "-m", "transfer.training.distributed", str(tmp_path / "run")]
    assert launch.rank_environment(two.to_dict(), worker_threads=8)["OMP_NUM_THREADS"] == "4"


# --------------------------------------------------------------------------- how a launch ended


def test_the_outcome_of_rank_0_wins_and_without_it_the_run_failed_and_resumes(tmp_path):
    run = RunDir.create(tmp_path / "runs", demo())
    run.update_status(epoch=2)
    outcome = run.path / launch.RANK_OUTCOME_FILE
    for state in ("finished", "failed", "cancelled"):
        outcome.write_text(json.dumps({"state": state, "message": f"Rank 0 says {state}."}))
        assert launch.rank_outcome(run, 1) == (state, f"Rank 0 says {state}.")
    outcome.write_text("{not json")
    state, message = launch.rank_outcome(run, -9)
    assert state == "failed"
    assert message.startswith("A training process stopped unexpectedly (killed by SIGKILL) before the run ended; "
                              "epoch 2 is kept. Resume the run to continue after its last finished epoch")
    outcome.unlink()
    assert launch.rank_outcome(run, 1, forced=True) == ("cancelled", "Cancelled; epoch 2 is kept.")


def test_on_another_machine_the_exit_status_tells_the_outcome(tmp_path):
    config = {**demo(), "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.5", "master_port": 29500}
    run = RunDir.create(tmp_path / "runs", config)
    state, message = launch.rank_outcome(run, 0)
    assert state == "finished" and "on node 0 (10.0.0.5:29500)" in message
    state, message = launch.rank_outcome(run, 1)
    assert state == "failed" and "resume it there and start this machine again" in message


def test_an_unanswered_cancel_stops_torchrun_then_kills_what_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "CANCEL_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(launch, "KILL_GRACE_SECONDS", 0.5)
    run = RunDir.create(tmp_path / "runs", demo())
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
                "time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout.readline() == b"ready\n"  # its handler is installed
    run.request_cancel()
    assert launch.supervise(run, process, poll=0.05) is True
    assert process.returncode == -signal.SIGKILL  # it ignored the polite stop, so it was killed


def test_ranks_that_answered_a_cancel_are_given_time_to_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "CANCEL_GRACE_SECONDS", 0.2)
    run = RunDir.create(tmp_path / "runs", demo())
    run.request_cancel()
    (run.path / launch.RANK_OUTCOME_FILE).write_text(json.dumps({"state": "cancelled", "message": "Cancelled."}))
    leaving = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], start_new_session=True)
    assert launch.supervise(run, leaving, poll=0.05) is False
    assert leaving.returncode == 0
    assert launch.rank_outcome(run, 1, forced=False) == ("cancelled", "Cancelled.")


# --------------------------------------------------------------------------- slots


def test_a_gpu_run_takes_a_slot_per_gpu_and_a_cpu_run_one(monkeypatch):
    monkeypatch.setattr(machine, "gpu_count", lambda: 4)
    assert slots_needed({"job": "train", "nproc_per_node": 4}, 4) == 4
    assert slots_needed({"job": "train", "nproc_per_node": 4}, 2) == 2  # at most the whole pool
    assert slots_needed({"job": "train", "nproc_per_node": 4, "device": "cpu"}, 4) == 1
    assert slots_needed({"job": "train"}, 4) == 1
    assert slots_needed({"job": "estimate", "nproc_per_node": 4}, 4) == 1
    monkeypatch.setattr(machine, "gpu_count", lambda: 0)
    assert slots_needed({"job": "train", "nproc_per_node": 2}, 4) == 1  # auto on a CPU machine


def test_slots_are_taken_all_at_once_or_not_at_all(home):
    held = try_take_slots(1, 3)
    assert len(held) == 1 and free_slot_count(3) == 2
    assert try_take_slots(3, 3) == []
    assert free_slot_count(3) == 2  # nothing half-taken
    both = try_take_slots(2, 3)
    assert len(both) == 2 and free_slot_count(3) == 0
    for fd in held + both:
        os.close(fd)


# --------------------------------------------------------------------------- transfer train


def test_train_flags_reach_the_run_config(home, tiny_dataset, monkeypatch, capsys):
    monkeypatch.setattr(machine, "cpu_cores", lambda: 8)
    held = try_take_slots(1, 1)  # the run stays queued: nothing here can reach 10.0.0.5
    try:
        code = cli.main(["train", str(tiny_dataset), "--method", "finetune", "--device", "cpu", "--batch-size", "8",
                         "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.5",
                         "--master-port", "29500", "--runs-dir", str(home / "runs"), "--no-wait", "--json"])
        assert code == 0
        run = RunDir(json.loads(capsys.readouterr().out.splitlines()[-1])["run_dir"])
        config = run.config
        assert (config["nproc_per_node"], config["nnodes"], config["node_rank"]) == (2, 2, 1)
        assert (config["master_addr"], config["master_port"], config["world_size"]) == ("10.0.0.5", 29500, 4)
        assert JobManager(home / "runs").cancel(run).state == "cancelled"
    finally:
        for fd in held:
            os.close(fd)


def test_train_flags_that_cannot_work_get_a_sentence(home, tiny_dataset, capsys):
    code = cli.main(["train", str(tiny_dataset), "--nnodes", "2", "--runs-dir", str(home / "runs"), "--json"])
    assert code == 2
    error = json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
    assert "give the master port" in error
    assert list_runs(home / "runs") == []


def test_the_train_summary_carries_the_world_size(home):
    run = RunDir.create(home / "runs", {**demo(), "world_size": 2})
    assert train_result(run, run.status(), 1.0)["world_size"] == 2


# --------------------------------------------------------------------------- real launches


def test_a_run_on_two_gpus_takes_two_slots_and_cancels_through_its_ranks(home):
    manager = JobManager(home / "runs", max_parallel=2)
    held = try_take_slots(1, 2)
    wide = manager.submit(demo(epochs=100, epoch_seconds=0.3, device="cuda"))  # demo ranks never touch CUDA
    assert dispatch() == []  # a dispatcher pass with one free slot starts nothing
    assert wide.status()["state"] == "queued"  # one free slot is not enough, and it takes none
    assert wide.status()["message"] == "Waiting for 2 free training slots (one per GPU) (next in line)."
    assert free_slot_count(2) == 1
    os.close(held[0])
    narrow = manager.submit({**demo(epochs=1, epoch_seconds=0.1), "nproc_per_node": 1})
    wait_for(lambda: (wide.status().get("epoch") or 0) >= 1, "the first epoch on two processes", timeout=WAIT)
    assert free_slot_count(2) == 0
    assert narrow.status()["state"] == "queued" and narrow.status()["queue_position"] == 1
    assert narrow.status()["message"] == "Waiting for a free training slot (next in line)."
    launched = [e for e in wide.events("info") if "world_size" in e]
    assert launched[0]["world_size"] == 2 and "demo_ranks" in launched[0]["command"]

    manager.cancel(wide)
    status = manager.wait(wide, timeout=WAIT)
    assert status["state"] == "cancelled" and status["message"].startswith("Cancelled; epoch ")
    assert json.loads((wide.path / launch.RANK_OUTCOME_FILE).read_text())["state"] == "cancelled"
    assert manager.wait(narrow, timeout=WAIT)["state"] == "finished"
    wait_for(lambda: not launched_processes(home), "every process of the launch to end", timeout=20)


def test_a_killed_rank_fails_the_run_and_resuming_continues_after_its_last_epoch(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=4, epoch_seconds=1.2, steps=4))
    wait_for(lambda: any(e["epoch"] == 2 for e in run.events("step")), "the second epoch", timeout=WAIT)
    os.kill(wait_for(lambda: rank_pid(home, 1), "rank 1", timeout=WAIT), signal.SIGKILL)
    status = manager.wait(run, timeout=WAIT)
    assert status["state"] == "failed"
    assert "A training process stopped unexpectedly" in status["message"]
    assert "Resume the run to continue after its last finished epoch" in status["message"]
    kept = status["epoch"]
    assert 1 <= kept < 4

    manager.resume(run)
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == "finished" and final["epoch"] == 4 and final["message"] == "Finished on 2 processes."
    starts = [e["start_epoch"] for e in run.events("info") if "start_epoch" in e]
    assert starts == [1, kept + 1]
    assert [e["state"] for e in run.events("end")] == ["failed", "finished"]


def test_a_killed_worker_takes_its_ranks_along_and_the_run_resumes(home):
    manager = JobManager(home / "runs")
    run = manager.submit(demo(epochs=3, epoch_seconds=1.2, steps=4))
    wait_for(lambda: any(e["epoch"] == 2 for e in run.events("step")), "the second epoch", timeout=WAIT)
    worker = run.status()["pid"]
    os.kill(worker, signal.SIGKILL)
    os.waitpid(worker, 0)
    # torchrun holds the run's lock too: the run counts as interrupted once the ranks are gone.
    wait_for(lambda: JobManager(home / "runs").get(run.id).state == "interrupted", "the run to be interrupted",
             timeout=45)
    assert launched_processes(home) == []
    kept = run.status()["epoch"]

    manager.resume(run)
    final = manager.wait(run, timeout=WAIT)
    assert final["state"] == "finished" and final["epoch"] == 3
    assert [e["start_epoch"] for e in run.events("info") if "start_epoch" in e] == [1, kept + 1]


# --------------------------------------------------------------------------- the web app


def test_gpus_to_use_is_offered_with_two_gpus_and_hidden_with_one(home, tiny_dataset, monkeypatch):
    from apptools import open_app, session_with_dataset

    token, workspace = session_with_dataset(tiny_dataset, {"backbone": "efficientnet_lite0", "method": "features",
                                                           "epochs": 3, "batch_size": 16, "image_size": 64})
    monkeypatch.setattr(machine, "gpu_count", lambda: 1)
    for page in ("pages/configure.py", "pages/train.py"):
        app = open_app(page, token=token)
        assert not app.exception, app.exception
        assert not [box for box in app.number_input if box.label == "GPUs to use"]

    monkeypatch.setattr(machine, "gpu_count", lambda: 2)
    app = open_app("pages/configure.py", token=token)
    assert app.number_input(key="gpus").label == "GPUs to use" and app.number_input(key="gpus").max == 2
    app.number_input(key="gpus").set_value(2).run()
    assert not app.exception, app.exception
    assert json.loads((workspace / "draft_config.json").read_text())["nproc_per_node"] == 2

    held = try_take_slots(1, 1)  # the run stays queued: this machine has no GPU to train on
    try:
        app = open_app("pages/train.py", token=token)
        assert app.number_input(key="gpus").value == 2  # as chosen on Configure
        app.button[0].click().run()  # Start training
        assert not app.exception, app.exception
        (run,) = list_runs(workspace / "runs")
        assert run.config["nproc_per_node"] == 2 and run.config["world_size"] == 2
        JobManager(workspace / "runs").cancel(run)
    finally:
        for fd in held:
            os.close(fd)


# --------------------------------------------------------------------------- end to end


@pytest.mark.skipif(machine.cpu_cores() < 2, reason="two CPU processes need two cores")
def test_two_cpu_processes_fine_tune_through_the_command_line(home, tiny_dataset, capsys):
    code = cli.main(["train", str(tiny_dataset), "--method", "finetune", "--nproc-per-node", "2", "--epochs", "1",
                     "--image-size", "64", "--device", "cpu", "--runs-dir", str(home / "runs"), "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = RunDir(result.get("run_dir") or home / "no-run")
    story = f"{result}\n{run.log_path.read_text()[-3000:] if run.log_path.is_file() else ''}"
    assert code == 0, story
    assert result["state"] == "finished" and result["world_size"] == 2 and result["epochs"] == 1, story
    assert 0.0 <= result["val_accuracy"] <= 1.0, story
    assert run.config["world_size"] == 2 and run.config["method"] == "finetune"
    # Rank 0 marks the run finished itself (the command returns then); its outcome file and the
    # worker's end event follow a moment later.
    assert wait_for(lambda: run.events("end"), "the worker's end event", timeout=WAIT)[0]["state"] == "finished"
    for name in ("config.json", "status.json", "events.jsonl", "labels.json", "model.safetensors", "model.json",
                 "checkpoint.pt", launch.RANK_OUTCOME_FILE):
        assert (run.path / name).is_file(), name
    assert [e["epoch"] for e in run.epoch_history()] == [1]  # one run folder, written once per epoch
    assert list_runs(home / "runs") == [run]
