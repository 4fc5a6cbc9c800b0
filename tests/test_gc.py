"""Clean-up: deleting runs, uploads and sessions on request, and `transfer gc` for idle sessions
and least-recently-used caches, sparing shared demos and live runs."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from waiting import wait_for

from transfer.runtime import gc
from transfer.data import uploads
from transfer.cli.main import main as cli_main
from transfer.core.files import try_lock
from transfer.core.runs import CANCELLED, FINISHED, RUNNING, RunDir

DAY = 86400.0


def make_run(runs_dir: Path, state: str = FINISHED, dataset_root: Path | None = None) -> RunDir:
    config = {"method": "features", "backbone": "efficientnet_lite0", "epochs": 1}
    if dataset_root is not None:
        config["dataset"] = {"root": str(dataset_root), "classes": [], "samples": []}
    run = RunDir.create(runs_dir, config)
    run.update_status(state=state)
    run.weights_path.write_bytes(b"w" * 1000)
    return run


class LiveWorker:
    """Holds a run's worker lock the way a live worker process does; ``stop`` ends the run as a
    worker that was asked to stop would."""

    def __init__(self, run: RunDir):
        self.run = run
        self.fd = try_lock(run.worker_lock_path)

    def stop(self) -> None:
        self.run.update_status(state=CANCELLED)
        os.close(self.fd)


def age(folder: Path, days: float) -> None:
    """Set the modification (and access) time of ``folder`` and everything in it ``days`` back."""
    moment = time.time() - days * DAY
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment), follow_symlinks=False)


def make_session(home: Path, name: str, idle_days: float, size: int = 2000) -> Path:
    workspace = home / "sessions" / name
    (workspace / "uploads").mkdir(parents=True)
    (workspace / "uploads" / "data.bin").write_bytes(b"u" * size)
    age(workspace, idle_days)
    return workspace


def make_cache_entry(home: Path, kind: str, name: str, size: int, idle_days: float) -> Path:
    entry = home / "cache" / kind / name
    entry.mkdir(parents=True)
    (entry / "blob").write_bytes(b"c" * size)
    age(entry, idle_days)
    return entry


# --------------------------------------------------------------------------- on request


def test_delete_run_frees_its_folder_and_refuses_a_running_run(tmp_path):
    runs_dir = tmp_path / "runs"
    done = make_run(runs_dir)
    assert gc.delete_run(runs_dir, done.id) >= 1000
    assert not done.path.exists() and not list(runs_dir.iterdir())
    running = make_run(runs_dir, RUNNING)
    worker = LiveWorker(running)
    try:
        with pytest.raises(gc.CleanupRefused, match="still running; stop it first"):
            gc.delete_run(runs_dir, running.id)
        assert running.exists()
    finally:
        worker.stop()
    with pytest.raises(Exception, match="not a run id"):
        gc.delete_run(runs_dir, "../elsewhere")


def test_delete_upload_refuses_while_a_live_run_trains_on_it(tmp_path, png):
    workspace = tmp_path / "session"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pets/cat/1.png", png(0, 1))
        zf.writestr("pets/dog/1.png", png(1, 1))
    folder = uploads.unpack_zip_upload(archive.getvalue(), workspace / "uploads", name="pets.zip")
    [upload] = uploads.list_uploads(workspace / "uploads")
    assert upload.name == "pets.zip" and upload.id.startswith("zips/")
    running = make_run(workspace / "runs", RUNNING, dataset_root=folder / "pets")
    worker = LiveWorker(running)
    try:
        with pytest.raises(gc.CleanupRefused, match="training on the pictures of pets.zip"):
            gc.delete_upload(workspace / "uploads", upload.id, workspace / "runs")
    finally:
        worker.stop()
    assert gc.delete_upload(workspace / "uploads", upload.id, workspace / "runs") > 0
    assert uploads.list_uploads(workspace / "uploads") == [] and not folder.exists()
    with pytest.raises(Exception, match="no upload"):
        gc.delete_upload(workspace / "uploads", "../../etc")


def test_delete_session_removes_everything_unless_a_run_is_live(tmp_path):
    workspace = tmp_path / "session"
    make_run(workspace / "runs")
    running = make_run(workspace / "runs", RUNNING)
    worker = LiveWorker(running)
    try:
        with pytest.raises(gc.CleanupRefused, match="still queued or running"):
            gc.delete_session(workspace)
    finally:
        worker.stop()
    assert gc.delete_session(workspace) >= 2000
    assert not workspace.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- transfer gc


def test_gc_removes_idle_sessions_only_and_spares_live_runs_and_demos(transfer_home):
    old = make_session(transfer_home, "old-session-token-aaaaaaaa", idle_days=45)
    fresh = make_session(transfer_home, "fresh-session-token-bbbbbbb", idle_days=2)
    busy = make_session(transfer_home, "busy-session-token-ccccccc", idle_days=60)
    running = make_run(busy / "runs", RUNNING)
    worker = LiveWorker(running)
    age(busy, 60)  # a live run is spared even when nothing in its session changed for long
    demo = transfer_home / "demos" / "sometoken"
    demo.mkdir(parents=True)
    (demo / "model.safetensors").write_bytes(b"m" * 100)
    age(transfer_home / "demos", 400)
    try:
        dry = gc.collect(max_idle_days=30, max_cache_gb=100, dry_run=True)
        assert len(dry.sessions_removed) == 1 and old.exists(), "a dry run deletes nothing"
        result = gc.collect(max_idle_days=30, max_cache_gb=100)
    finally:
        worker.stop()
    assert not old.exists() and fresh.exists() and busy.exists() and running.exists()
    assert result.sessions_kept_running == [busy.name]
    assert result.bytes_freed >= 2000 and (demo / "model.safetensors").exists()
    assert not [p for p in (transfer_home / "sessions").iterdir() if p.name.startswith(".")]


def test_gc_shrinks_caches_least_recently_used_first(transfer_home):
    oldest = make_cache_entry(transfer_home, "features", "a", 4000, idle_days=20)
    older = make_cache_entry(transfer_home, "datasets", "b", 4000, idle_days=10)
    recent = make_cache_entry(transfer_home, "features", "c", 4000, idle_days=1)
    just_used = make_cache_entry(transfer_home, "decoded", "d", 4000, idle_days=0)
    result = gc.collect(max_idle_days=30, max_cache_gb=9000 / 1e9)
    assert [item["entry"] for item in result.cache_entries_removed] == ["features/a", "datasets/b"]
    assert not oldest.exists() and not older.exists() and recent.exists() and just_used.exists()
    assert result.cache_bytes_before == 16000 and result.cache_bytes_after == 8000 and result.bytes_freed == 8000


def test_gc_spares_cache_entries_a_live_run_reads(transfer_home):
    used = make_cache_entry(transfer_home, "datasets", "in-use", 4000, idle_days=20)
    spare = make_cache_entry(transfer_home, "datasets", "spare", 4000, idle_days=5)
    session = make_session(transfer_home, "live-session-token-dddddddd", idle_days=0)
    running = make_run(session / "runs", RUNNING, dataset_root=used / "pets")
    worker = LiveWorker(running)
    try:
        result = gc.collect(max_cache_gb=0)
    finally:
        worker.stop()
    assert used.exists() and not spare.exists()
    assert [item["entry"] for item in result.cache_entries_removed] == ["datasets/spare"]


def test_gc_command_prints_what_it_freed_and_json(transfer_home, capsys, monkeypatch):
    make_session(transfer_home, "old-session-token-eeeeeeee", idle_days=10)
    make_cache_entry(transfer_home, "features", "x", 3000, idle_days=3)
    assert cli_main(["gc", "--max-idle-days", "7", "--max-cache-gb", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to delete" in out and "would free" in out
    monkeypatch.setenv(gc.MAX_IDLE_DAYS_ENV, "5")
    assert cli_main(["gc", "--max-cache-gb", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["max_idle_days"] == 5 and len(result["sessions_removed"]) == 1
    assert result["bytes_freed"] >= 5000 and not (transfer_home / "sessions" / "old-session-token-eeeeeeee").exists()
    monkeypatch.setenv(gc.MAX_IDLE_DAYS_ENV, "soon")
    assert cli_main(["gc"]) == 2
    assert "must be a number" in capsys.readouterr().err


def test_the_web_app_collects_at_most_once_per_interval(transfer_home, monkeypatch):
    old = make_session(transfer_home, "old-session-token-ffffffff", idle_days=90)
    monkeypatch.setenv(gc.MAX_IDLE_DAYS_ENV, "30")  # projects are kept by default; an operator's limit applies
    monkeypatch.setattr(gc, "_web_last", [0.0])
    assert gc.collect_now_and_then(interval=3600) is True
    stamp = transfer_home / "gc.json"
    wait_for(lambda: "bytes_freed" in (stamp.read_text() if stamp.exists() else ""), "the background collection's note",
             timeout=30)
    assert not old.exists()
    assert json.loads(stamp.read_text())["bytes_freed"] >= 2000, "what the background process freed is noted"
    assert gc.collect_now_and_then(interval=3600) is False, "not again within the hour (this process)"
    monkeypatch.setattr(gc, "_web_last", [0.0])
    assert gc.collect_now_and_then(interval=3600) is False, "nor from another process (the stamp file)"


def test_gc_gives_caches_a_day_of_grace_while_a_run_trains(transfer_home):
    from transfer.runtime.local_queue import slot_path

    entry = make_cache_entry(transfer_home, "features", "read-all-day", 4000, idle_days=0.2)
    slot = try_lock(slot_path(0))  # a run trains on this machine (its worker holds a slot)
    try:
        assert gc.collect(max_cache_gb=0).cache_entries_removed == [] and entry.exists()
    finally:
        os.close(slot)
    assert [item["entry"] for item in gc.collect(max_cache_gb=0).cache_entries_removed] == ["features/read-all-day"]


def test_a_run_being_deleted_is_never_listed(tmp_path):
    from transfer.core.runs import list_runs

    run = make_run(tmp_path / "runs")
    run.path.rename(run.path.with_name(".deleting-" + run.id))
    assert list_runs(tmp_path / "runs") == []


def test_gc_sweeps_stored_starting_weights_no_run_names_any_more(transfer_home, tmp_path):
    from transfer.models.weights import store_file

    runs_dir = transfer_home / "sessions" / "s1" / "runs"
    kept_weights, orphan, fresh = (store_file(_bytes_file(tmp_path, name, content), runs_dir)
                                   for name, content in (("a.pt", b"a" * 500), ("b.pt", b"b" * 700),
                                                         ("c.pt", b"c" * 300)))
    still_used = make_run(runs_dir)
    config = json.loads((still_used.path / "config.json").read_text())
    config["initial_weights"] = kept_weights.to_dict()
    (still_used.path / "config.json").write_text(json.dumps(config))
    day_and_more = time.time() - gc.WEIGHTS_GRACE_SECONDS - 60
    for stored in (kept_weights, orphan):
        os.utime(stored.path, (day_and_more, day_and_more))
    cli_runs = tmp_path / "cli-runs"
    cli_orphan = store_file(_bytes_file(tmp_path, "d.pt", b"d" * 900), cli_runs)
    os.utime(cli_orphan.path, (day_and_more, day_and_more))

    result = gc.collect(max_idle_days=30, max_cache_gb=100, runs_dirs=[cli_runs])
    assert [item["bytes"] for item in result.weights_removed] == [700, 900]
    assert Path(kept_weights.path).exists() and Path(fresh.path).exists()  # named by a run; stored today
    assert not Path(orphan.path).exists() and not Path(cli_orphan.path).exists()
    assert result.bytes_freed >= 1600


def _bytes_file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path
