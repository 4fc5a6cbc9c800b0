"""The run directory: ids, atomic files, status merging, events that survive a torn write."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from transfer.core.errors import TransferError
from transfer.core.runs import (Cancelled, InvalidRunId, RunDir, RunNotFound, find_run, is_safe_run_id,
    list_runs, new_run_id)
from transfer.core.files import atomic_write_json


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRANSFER_OFFLINE", "1")


def test_run_ids_are_path_safe_unique_and_start_with_the_time():
    ids = {new_run_id() for _ in range(500)}
    assert len(ids) == 500
    today = time.strftime("%Y%m%d")
    for run_id in ids:
        assert re.fullmatch(r"\d{8}-\d{6}-[a-z0-9]{12}", run_id)
        assert run_id.startswith(today) or run_id[:8] > today  # tolerate midnight
        assert is_safe_run_id(run_id)


@pytest.mark.parametrize("hostile", ["../x", "..", ".", "", "a/b", "/etc/passwd", ".hidden", "x/../../y",
                                     "a\\b", "run\x00", "..a", " spaced"])
def test_find_run_refuses_ids_that_could_leave_the_runs_folder(tmp_path, hostile):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(InvalidRunId) as caught:
        find_run(runs, hostile)
    assert isinstance(caught.value, TransferError)
    assert "transfer runs" in str(caught.value)


def test_find_run_explains_a_missing_run(tmp_path):
    with pytest.raises(RunNotFound, match="transfer runs"):
        find_run(tmp_path, "20260101-000000-abcdefghijkl")


def test_create_writes_config_and_a_queued_status(tmp_path):
    run = RunDir.create(tmp_path / "runs", {"method": "features", "backbone": "efficientnet_lite0", "epochs": 4})
    assert run.path.parent == (tmp_path / "runs").resolve()
    assert find_run(tmp_path / "runs", run.id) == run
    assert json.loads((run.path / "config.json").read_text())["method"] == "features"
    fresh = RunDir(run.path)  # another process's view
    assert fresh.config == {"method": "features", "backbone": "efficientnet_lite0", "epochs": 4}
    status = fresh.status()
    assert status["state"] == "queued" and status["epochs"] == 4 and status["epoch"] == 0
    summary = fresh.summary()
    assert summary["id"] == run.id and summary["method"] == "features"
    assert summary["backbone"] == "efficientnet_lite0" and summary["seconds"] is None


def test_atomic_write_keeps_the_old_file_when_the_new_content_cannot_be_written(tmp_path):
    target = tmp_path / "status.json"
    atomic_write_json(target, {"state": "running"})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"state": object()})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"accuracy": float("nan")})
    assert json.loads(target.read_text()) == {"state": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp files left behind


def test_update_status_merges_and_none_removes_a_field(tmp_path):
    run = RunDir.create(tmp_path, {"epochs": 2})
    run.update_status(state="running", pid=123, queue_position=2)
    status = run.update_status(epoch=1, queue_position=None)
    assert status == run.status()
    assert status["state"] == "running" and status["pid"] == 123 and status["epoch"] == 1
    assert "queue_position" not in status


def test_transition_only_applies_from_the_expected_states(tmp_path):
    run = RunDir.create(tmp_path, {})
    assert run.transition(["running"], state="finished") is None
    assert run.state == "queued"
    assert run.transition(["queued"], state="cancelled")["state"] == "cancelled"
    assert run.transition(["queued"], state="running") is None
    assert run.state == "cancelled"


def test_concurrent_status_updates_are_not_lost(tmp_path):
    run = RunDir.create(tmp_path, {})

    def writer(name):
        for i in range(15):
            run.update_status(**{f"{name}_{i}": i})

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = run.status()
    assert all(f"w{n}_{i}" in status for n in range(4) for i in range(15))


def test_events_skip_a_torn_last_line_and_incremental_reads_wait_for_it(tmp_path):
    run = RunDir.create(tmp_path, {})
    run.append_event({"type": "info", "message": "start"})
    run.append_event({"type": "epoch", "epoch": 1, "val_accuracy": 0.5})
    with open(run.events_path, "a") as handle:  # a worker killed in the middle of a write
        handle.write('{"type": "epoch", "epoch": 2, "val_acc')
    events = run.events()
    assert [e["type"] for e in events] == ["info", "epoch"]
    assert all(isinstance(e["time"], float) for e in events)
    assert run.events("epoch") == [events[1]]
    assert run.events(["info"]) == [events[0]]

    first, offset = run.read_events(0)
    assert len(first) == 2
    assert run.read_events(offset) == ([], offset)  # the torn line is not consumed
    with open(run.events_path, "a") as handle:
        handle.write('uracy": 0.75}\n')
    later, offset2 = run.read_events(offset)
    assert later == [{"type": "epoch", "epoch": 2, "val_accuracy": 0.75}]
    assert offset2 == run.events_path.stat().st_size


def test_a_garbled_line_in_the_middle_is_skipped(tmp_path):
    run = RunDir.create(tmp_path, {})
    run.append_event({"type": "step", "step": 1})
    with open(run.events_path, "a") as handle:
        handle.write("\x00\x00garbage\n[1, 2]\n")
    run.append_event({"type": "step", "step": 2})
    assert [e["step"] for e in run.events("step")] == [1, 2]


def test_append_event_requires_a_type(tmp_path):
    run = RunDir.create(tmp_path, {})
    with pytest.raises(ValueError):
        run.append_event({"epoch": 1})
    assert run.events() == []


def test_epoch_history_keeps_the_later_copy_of_a_repeated_epoch(tmp_path):
    run = RunDir.create(tmp_path, {})
    for epoch, accuracy in [(1, 0.5), (2, 0.6), (2, 0.7), (3, 0.8)]:
        run.append_event({"type": "epoch", "epoch": epoch, "val_accuracy": accuracy})
    history = run.epoch_history()
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert history[1]["val_accuracy"] == 0.7


def test_labels_cancel_flag_and_file_paths(tmp_path):
    run = RunDir.create(tmp_path, {})
    assert run.labels() is None
    run.write_labels(["ants", "bees"])
    assert RunDir(run.path).labels() == ["ants", "bees"]
    assert not run.cancel_requested()
    RunDir(run.path).request_cancel()
    assert run.cancel_requested()
    run.clear_cancel()
    assert not run.cancel_requested()
    assert run.weights_path.name == "model.safetensors"
    assert run.checkpoint_path.name == "checkpoint.pt"
    assert issubclass(Cancelled, Exception)


def test_summary_adds_the_seconds_of_earlier_attempts(tmp_path):
    run = RunDir.create(tmp_path, {})
    run.update_status(state="finished", started_at=100.0, ended_at=130.0, earlier_seconds=12.5)
    assert run.summary()["seconds"] == 42.5


def test_list_runs_newest_first_and_ignores_other_folders(tmp_path):
    assert list_runs(tmp_path / "missing") == []
    first = RunDir.create(tmp_path, {"n": 1})
    second = RunDir.create(tmp_path, {"n": 2})
    first.update_status(created_at=1000.0)
    second.update_status(created_at=2000.0)
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert list_runs(tmp_path) == [second, first]
