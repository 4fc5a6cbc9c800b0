"""What creating, keeping and ending demos may cost the server and give away: exports only in a
child process, demos within their owner's quota, expired demos collected, a deleted owner's demos
revoked."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from test_page_evaluate import trained  # noqa: F401 (the shared tiny finished run)
from test_page_predict import encoded
from test_share import exported, run  # noqa: F401
from transfer.core.quota import DiskQuota, folder_bytes
from transfer.runtime import gc
from transfer.serving import export, share
from transfer.serving.server_predict import ServerPredictor
from transfer.serving.share import DemoStore, ShareError
from transfer.serving.web_page import browser_info
from ui import live_view


@pytest.fixture
def run_without_exports(run):
    shutil.rmtree(run.path / "exports", ignore_errors=True)
    return run


def test_a_demo_made_by_the_web_server_never_exports_in_its_own_process(run_without_exports, monkeypatch):
    def no_export_here(*args, **kwargs):
        raise AssertionError("export_run ran in the web server's process")

    def slow_child(run_dir, format, timeout=0):
        raise export.ExportError(f"The {format} export took longer than 10 minutes and was stopped; "
                                 "try again when the machine is less busy.")

    monkeypatch.setattr(export, "export_run", no_export_here)
    monkeypatch.setattr(export, "export_in_subprocess", slow_child)
    with pytest.raises(ShareError, match="took longer than 10 minutes.*without the download"):
        DemoStore().create(run_without_exports.path, allow_download=True, exports_in_child=True)
    token, demo = DemoStore().create(run_without_exports.path, exports_in_child=True)
    assert not (demo.folder / share.ONNX_FILE).exists()  # predicted by a child process instead
    assert DemoStore().open(token).title


def output_names(path) -> list[str]:
    return [output.name for output in export.onnx_session(path).get_outputs()]


def bundle_entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}


def test_a_demo_hands_out_no_novelty_reference_unless_its_owner_says_so(run):
    assert (run.path / share.NOVELTY_FILE).is_file()
    token, demo = DemoStore().create(run.path, allow_download=True)
    assert output_names(demo.folder / share.ONNX_FILE) == ["probabilities", "novelty"]  # stays on the server
    sent, info = live_view.model_files(demo.folder)  # what the live camera sends to every visitor
    assert sent.name == share.LIVE_ONNX_FILE and output_names(sent) == ["probabilities"]
    assert "novelty" not in browser_info(info)
    bundle = bundle_entries(demo.bundle_path)
    assert share.NOVELTY_FILE not in bundle and "novelty" not in json.loads(bundle["model.json"])
    assert output_names(bundle["model.onnx"]) == ["probabilities"]

    # The classes visitors' devices compute are the server's, and "None of these" is judged on the
    # server from the snapshot exactly as from the run itself.
    size = int(info["preprocessing"]["input_size"])
    inputs = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    on_device = export.onnx_session(sent).run(None, {"input": inputs})[0]
    on_server = export.onnx_session(demo.folder / share.ONNX_FILE).run(None, {"input": inputs})[0]
    assert np.abs(on_device - on_server).max() <= 1e-6
    pictures = [encoded("red", 3), encoded("blue", 4), encoded("green", 5)]
    from_demo = ServerPredictor(demo.folder).predict(pictures, 3)
    from_run = ServerPredictor(run.path).predict(pictures, 3)
    assert [(p.labels, p.unknown) for p in from_demo] == [(p.labels, p.unknown) for p in from_run]
    assert all(a.novelty == pytest.approx(b.novelty, abs=1e-6) for a, b in zip(from_demo, from_run))

    _, shared = DemoStore().create(run.path, allow_download=True, include_reference=True)
    assert not (shared.folder / share.LIVE_ONNX_FILE).exists()
    assert output_names(live_view.model_files(shared.folder)[0]) == ["probabilities", "novelty"]
    assert share.NOVELTY_FILE in bundle_entries(shared.bundle_path)


def test_an_owner_has_a_capped_number_of_live_demos_within_the_quota(run, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_DEMOS_PER_OWNER", "2")
    record = tmp_path / "owner" / share.OWNER_FILE
    store = DemoStore()
    first, _ = store.create(run.path, owner_record=record)
    store.create(run.path, owner_record=record)
    with pytest.raises(ShareError, match="already have 2 live demo links"):
        store.create(run.path, owner_record=record)
    store.revoke(first)
    store.create(run.path, owner_record=record)  # a revoked demo frees its place

    tight = DiskQuota(tmp_path / "owner", folder_bytes(tmp_path / "owner") + 1000)
    monkeypatch.setenv("TRANSFER_DEMOS_PER_OWNER", "10")
    before = len(store.list())
    with pytest.raises(ShareError, match="quota.*Your demos count too"):
        store.create(run.path, owner_record=record, quota=tight)
    assert len(store.list()) == before  # nothing half-made is left


def test_gc_collects_expired_demos_and_deleting_a_session_revokes_its_demos(run, transfer_home):
    workspace = transfer_home / "sessions" / "someone"
    workspace.mkdir(parents=True)
    record = workspace / share.OWNER_FILE
    store = DemoStore()
    expiring, _ = store.create(run.path, expires="1h", owner_record=record)
    forever, kept = store.create(run.path, expires="never", owner_record=record)
    later = DemoStore(clock=lambda: store.clock() + 7200)
    collected = gc.collect(max_idle_days=365, home=transfer_home, now=later.clock())
    ended = later.find(expiring)
    assert collected.demos_collected == [ended.id]
    assert not (ended.folder / "model.safetensors").exists() and ended.state(later.clock()) == "expired"
    assert (kept.folder / "model.safetensors").exists()  # a live demo is never touched

    gc.delete_session(workspace)
    with pytest.raises(share.DemoUnavailable):
        DemoStore().open(forever)
    assert not (kept.folder / "model.safetensors").exists()


def test_a_picture_arriving_after_its_demo_was_revoked_is_not_kept(run):
    from transfer.serving import demo_collect

    token, demo = DemoStore().create(run.path)
    demo_collect.enable(demo.folder)
    opened_by_visitor = DemoStore().open(token)  # the page opened the demo a moment before
    DemoStore().revoke(token)
    assert not demo_collect.keep_picture(opened_by_visitor, encoded("red", 9))
    assert not (demo.folder / share.COLLECTED_FOLDER).exists()
