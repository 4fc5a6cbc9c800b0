"""Smaller holes a stranger could use: password guessing from rotating addresses, a page zip
naming parent folders, and a picture kept by a demo revoked a moment before."""

from __future__ import annotations

import zipfile

import pytest

from test_access import FakeClock
from transfer.runtime.access import PasswordCheck
from transfer.serving import web_page


def test_ipv6_addresses_of_one_64_network_share_one_wait():
    clock = FakeClock()
    check = PasswordCheck("pw", first_delay=0.5, max_delay=8, sleep=clock.sleep, clock=clock)
    for host in range(1, 5):  # a new address of the same /64 for every guess
        assert not check.attempt(f"2001:db8:1:2::{host:x}", "guess")
    assert clock.slept == [0.5, 1.0, 2.0, 4.0]
    assert not check.attempt("2001:db8:1:3::1", "guess") and clock.slept[-1] == 0.5  # another /64


def test_past_the_server_wide_budget_every_wrong_guess_waits_the_longest():
    clock = FakeClock()
    check = PasswordCheck("pw", first_delay=0.5, max_delay=8, max_clients=2, server_budget=5,
                          sleep=clock.sleep, clock=clock)
    for client in range(12):  # a new address for every guess, also overflowing the tracked clients
        assert not check.attempt(f"10.0.0.{client}", "guess")
    assert clock.slept[:5] == [0.5] * 5 and clock.slept[5:] == [8] * 7
    assert check.attempt("10.0.0.99", "pw")  # the right password still opens at once


def test_a_page_zip_naming_a_parent_folder_is_refused(tmp_path):
    archive = tmp_path / "page.zip"
    with zipfile.ZipFile(archive, "w") as page:
        page.writestr("page/index.html", "<html></html>")
        page.writestr("page/../../outside.txt", "not here")
    with pytest.raises(OSError, match="outside its folder"):
        web_page.unpack_page(archive, tmp_path / "unpacked")
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("name", ["with\x00nul", "tab\there", "__MACOSX", "bell\x07", ".hidden", "a/b"])
def test_a_new_class_follows_the_upload_rules_for_names(tmp_path, png, name):
    from transfer.core.errors import TransferError
    from transfer.data.working_copy import WorkingCopy

    copy = WorkingCopy(tmp_path / "copy")
    copy.start_empty()
    with pytest.raises(TransferError, match="cannot be a class name"):
        copy.add(png(0, 1), name, name="picture.png")
    assert [path.name for path in copy.data.rglob("*") if path.is_file()] == []


def test_a_data_set_with_more_classes_than_the_cap_is_refused_with_a_sentence(tmp_path, png, monkeypatch):
    from transfer.data import report
    from transfer.data.dataset import check_dataset

    monkeypatch.setattr(report, "MAX_CLASSES", 3)
    for index in range(4):
        folder = tmp_path / "data" / f"class{index}"
        folder.mkdir(parents=True)
        for picture in range(2):
            (folder / f"{picture}.png").write_bytes(png(index, picture))
    checked = check_dataset(tmp_path / "data")
    assert any("Found 4 classes; the studio trains at most 3" in error for error in checked.errors)


def test_two_tabs_adding_at_once_keep_both_edits(tmp_path, png, monkeypatch):
    import threading
    import time

    from transfer.data import working_copy
    from transfer.data.working_copy import WorkingCopy

    copy = WorkingCopy(tmp_path / "copy")
    copy.start_empty()
    original = working_copy.atomic_write_json

    def slow_write(path, obj):  # widens the window between reading the edits and writing them back
        time.sleep(0.2)
        original(path, obj)

    monkeypatch.setattr(working_copy, "atomic_write_json", slow_write)
    tabs = [threading.Thread(target=WorkingCopy(tmp_path / "copy").add, args=(png(0, index), "red"),
                             kwargs={"name": f"tab{index}.png"}) for index in range(2)]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join()
    assert sorted(edit["path"] for edit in WorkingCopy(tmp_path / "copy").edits) == ["red/tab0.png", "red/tab1.png"]
    assert len(set(working_copy.read_pinned_splits(copy.data))) == 2


def test_a_demo_bundle_names_neither_the_source_run_nor_the_uploaded_weights(tmp_path):
    import json

    from transfer.serving.share import copy_bundle_without_run_id

    source = tmp_path / "run-7.zip"
    info = {"classes": ["a", "b"], "initial_weights": {"run": "run-3", "file": "my-secret-model.pt"}}
    with zipfile.ZipFile(source, "w") as bundle:
        bundle.writestr("run-7/model.json", json.dumps(info))
    copy_bundle_without_run_id(source, tmp_path / "bundle.zip", "run-7")
    with zipfile.ZipFile(tmp_path / "bundle.zip") as bundle:
        text = bundle.read("model/model.json").decode()
    assert json.loads(text) == {"classes": ["a", "b"]} and "secret" not in text


def test_the_explainers_sentence_names_no_server_path(monkeypatch):
    from transfer.serving import explainer

    worker = explainer.Explainer()
    monkeypatch.setattr(worker, "_exchange", lambda request: {
        "error": "The heat map could not be made (FileNotFoundError: [Errno 2] No such file or directory: "
                 "'/srv/studio/sessions/Ab12/runs/run-1/model.safetensors')."})
    with pytest.raises(explainer.ExplainError) as raised:
        worker.explain("/srv/studio/sessions/Ab12/runs/run-1", b"picture")
    assert "/srv" not in str(raised.value) and "sessions" not in str(raised.value)
    assert "could not be made" in str(raised.value)


def test_a_workers_log_names_its_run_not_the_sessions_folder(tmp_path, monkeypatch):
    from test_jobs import WAIT, demo
    from transfer.runtime.jobs import JobManager

    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "home"))
    runs = tmp_path / "home" / "sessions" / "SessionTokenXYZ" / "runs"
    manager = JobManager(runs)
    run = manager.submit(demo(epochs=1, epoch_seconds=0.05))
    assert manager.wait(run, timeout=WAIT)["state"] == "finished"
    log = run.log_path.read_text()
    assert f"running run {run.id}" in log and "SessionTokenXYZ" not in log
