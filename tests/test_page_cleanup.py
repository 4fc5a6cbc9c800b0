"""Deleting from the pages, each after a confirmation: a run (Train), an upload (Data), the whole
session (Home); a live run is never deleted. Also: a large data set is checked in the worker
pool with a progress bar, and over-quota or bomb uploads get a sentence on the Data page."""

from __future__ import annotations

import io
import os
import zipfile

from apptools import open_app
from waiting import wait_for

from transfer.runtime.access import issue_session_token, session_dir
from transfer.core.files import try_lock
from transfer.core.quota import SESSION_QUOTA_ENV
from transfer.core.runs import FINISHED, RUNNING, RunDir, list_runs


def new_session() -> tuple[str, "os.PathLike"]:
    token = issue_session_token()
    workspace = session_dir(token)
    (workspace / "runs").mkdir(parents=True, exist_ok=True)
    return token, workspace


def fake_run(workspace, state: str = FINISHED) -> RunDir:
    run = RunDir.create(workspace / "runs", {"method": "features", "backbone": "efficientnet_lite0", "epochs": 1})
    run.update_status(state=state, epoch=1)
    return run


def buttons(app) -> dict:
    return {b.label: b for b in app.button}


def pets_zip(png) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for class_index, name in enumerate(("cats", "dogs")):
            for index in range(3):
                archive.writestr(f"pets/{name}/{index}.png", png(class_index, index))
    return buffer.getvalue()


def test_delete_a_run_from_the_train_page_after_confirming():
    token, workspace = new_session()
    run = fake_run(workspace)
    app = open_app("pages/train.py", token=token)
    assert not app.exception, app.exception
    buttons(app)["Delete this run"].click().run()
    assert run.exists(), "the first click only asks"
    assert any("for good" in w.value for w in app.warning)
    buttons(app)["Keep it"].click().run()
    assert run.exists() and "Delete this run" in buttons(app)
    buttons(app)["Delete this run"].click().run()
    buttons(app)["Delete for good"].click().run()
    assert not app.exception, app.exception
    assert not run.path.exists() and list_runs(workspace / "runs") == []
    assert app.query_params.get("run") in (None, "", [])


def test_a_running_run_offers_no_delete_and_the_engine_refuses_it():
    token, workspace = new_session()
    run = fake_run(workspace, RUNNING)
    lock = try_lock(run.worker_lock_path)  # a live worker holds this
    try:
        app = open_app("pages/train.py", token=token)
        assert not app.exception, app.exception
        assert "Delete this run" not in buttons(app)
        assert any("Stop this run to be able to delete it" in c.value for c in app.caption)
    finally:
        os.close(lock)
    assert run.exists()


def test_delete_an_upload_from_the_data_page(png):
    token, workspace = new_session()
    app = open_app("pages/data.py", token=token)
    app.file_uploader(key="zip#0").set_value(("pets.zip", pets_zip(png), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("Using the pictures in pets.zip" in s.value for s in app.success)
    buttons(app)["Delete pets.zip"].click().run()
    assert any("Delete the upload pets.zip for good?" in w.value for w in app.warning)
    buttons(app)["Delete for good"].click().run()
    assert not app.exception, app.exception
    assert any("Deleted pets.zip" in s.value for s in app.success)
    assert not list((workspace / "uploads" / "zips").iterdir())
    assert not (workspace / "dataset.json").exists(), "the deleted upload is no longer the chosen data set"
    assert any("No data set chosen yet" in i.value for i in app.info)


def test_over_quota_and_bomb_uploads_get_a_sentence_on_the_data_page(png, monkeypatch):
    monkeypatch.setenv(SESSION_QUOTA_ENV, "0.000001")
    token, workspace = new_session()
    app = open_app("pages/data.py", token=token)
    app.file_uploader(key="zip#0").set_value(("pets.zip", pets_zip(png), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("quota" in e.value for e in app.error)
    monkeypatch.setenv(SESSION_QUOTA_ENV, "5")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(40):
            archive.writestr(f"cats/{index}.jpg", b"\0" * 1024**2)
    app.file_uploader(key="zip#1").set_value(("bomb.zip", bomb.getvalue(), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("zip bomb" in e.value for e in app.error)
    assert not [p for p in workspace.rglob("*") if p.is_file() and p.suffix == ".jpg"]


def test_a_large_data_set_is_checked_in_the_worker_pool_with_progress(tiny_dataset, monkeypatch):
    monkeypatch.setenv("TRANSFER_CHECK_INLINE_MAX_FILES", "5")  # the 30-picture set counts as large
    token, workspace = new_session()
    (workspace / "dataset.json").write_text(
        f'{{"source": "{tiny_dataset}", "name": "tiny", "val_fraction": 0.2, "seed": 0}}')
    app = open_app("pages/data.py", token=token)
    assert not app.exception, app.exception
    shown = [p.proto.text for p in app.get("progress")]
    assert any("checker" in text or "Checking the pictures" in text for text in shown), shown
    from transfer.data import checks

    pool = checks.shared_pool()
    [job] = [job for key, job in pool._jobs.items() if key[0] == str(tiny_dataset)]
    job.result(timeout=120)
    assert wait_for(job.progress, "the worker's progress", timeout=5) == (30, 30), "the worker reported its progress"
    app.run()
    assert not app.exception, app.exception
    assert any("30 pictures in 3 classes are ready" in s.value for s in app.success)


def test_delete_a_run_from_the_evaluate_page():
    token, workspace = new_session()
    keep, doomed = fake_run(workspace), fake_run(workspace)
    app = open_app("pages/evaluate.py", token=token)
    app.query_params["run"] = doomed.id
    app.run()
    assert not app.exception, app.exception
    buttons(app)["Delete this run"].click().run()
    buttons(app)["Delete for good"].click().run()
    assert not app.exception, app.exception
    assert not doomed.path.exists() and keep.exists()
    assert any("Deleted the run " in s.value for s in app.success)


def test_a_full_disk_gets_a_sentence_on_the_data_page_and_keeps_the_earlier_upload(png, monkeypatch):
    import errno

    from transfer.data import archives as archive_module  # where zips are written

    token, workspace = new_session()
    app = open_app("pages/data.py", token=token)
    app.file_uploader(key="zip#0").set_value(("pets.zip", pets_zip(png), "application/zip")).run()
    real_open = open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(archive_module, "open", open_on_a_full_disk, raising=False)
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        for index in range(3):
            archive.writestr(f"more/a/{index}.png", png(0, 10 + index))
            archive.writestr(f"more/b/{index}.png", png(1, 10 + index))
    app.file_uploader(key="zip#1").set_value(("more.zip", other.getvalue(), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("The disk is full" in e.value for e in app.error)
    assert app.subheader[0].value == "Data set: pets.zip", "the earlier upload is still the data set"
    assert len(list((workspace / "uploads" / "zips").iterdir())) == 1, "no half-unpacked folder"
