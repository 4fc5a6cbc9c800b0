"""Corrections from use and "Train again" (AppTest): a Predict answer confirmed or corrected and an
Evaluate wrong answer fixed go into the session's working copy (new pictures to training, the
validation pictures fixed); the Train page then trains again and compares both runs on the same
validation pictures."""

from __future__ import annotations

import json
import shutil

import pytest
from apptools import open_app
from test_page_evaluate import TrainedSession, in_trained_home, trained  # noqa: F401 (fixtures)
from test_page_predict import encoded

from transfer.runtime.access import issue_session_token, session_dir
from transfer.analysis.compare import compare_runs
from transfer.data.dataset import check_dataset
from transfer.analysis.evaluate import PREDICTIONS_FILE
from transfer.runtime.jobs import JobManager
from transfer.core.runs import RunDir
from transfer.core.files import atomic_write_json
from transfer.models.run_names import run_name


@pytest.fixture
def own_session(in_trained_home: TrainedSession):
    """A fresh session holding a copy of the trained run, with the run's data set chosen."""
    token = issue_session_token()
    workspace = session_dir(token)
    runs = workspace / "runs"
    runs.mkdir(exist_ok=True)
    shutil.copytree(in_trained_home.run.path, runs / in_trained_home.run.id,
                    ignore=shutil.ignore_patterns(".*.tmp", "*.lock", ".tmp-*"))
    (workspace / "dataset.json").write_text(json.dumps({"source": str(in_trained_home.dataset), "name": "colours",
                                                        "val_fraction": 0.2, "seed": 0}))
    return token, workspace, RunDir(runs / in_trained_home.run.id), in_trained_home.dataset


def test_predict_corrections_add_the_picture_to_training(own_session):
    token, workspace, run, dataset = own_session
    before = check_dataset(dataset).dataset
    app = open_app("pages/predict.py", token=token, timeout=240)
    app.file_uploader(key="pictures").set_value([("new-red.png", encoded("red", 0), "image/png"),
                                                 ("new-blue.png", encoded("blue", 1), "image/png")]).run()
    assert not app.exception, app.exception
    right = next(b for b in app.button if b.key == "correct_upload_0:right")
    predicted = right.label.split(": ", 1)[1]
    right.click().run()
    assert not app.exception, app.exception
    copy = workspace / "audit" / "working_copy" / "data"
    assert (copy / predicted / "new-red.png").is_file()
    assert any("In your data set as" in c.value for c in app.caption)
    app.selectbox(key="correct_upload_1:actually").set_value("green").run()
    assert (copy / "green" / "new-blue.png").is_file()
    after = check_dataset(copy).dataset
    added = {s.path.name: s.split for s in after.samples if s.path.name.startswith("new-")}
    assert added == {"new-red.png": "train", "new-blue.png": "train"}
    assert {s.sha256 for s in after.val} == {s.sha256 for s in before.val}
    assert sorted(p.name for p in dataset.rglob("*.png")) == sorted(s.path.name for s in before.samples)


def test_evaluate_wrong_answer_fixes_the_label_and_stays_in_validation(own_session):
    token, workspace, run, dataset = own_session
    data = json.loads((run.path / PREDICTIONS_FILE).read_text())
    item = data["predictions"][0]
    other = next(c for c in data["classes"] if c != item["label"])
    item["predicted"] = other
    item["probabilities"] = [0.9 if c == other else 0.1 / (len(data["classes"]) - 1) for c in data["classes"]]
    atomic_write_json(run.path / PREDICTIONS_FILE, data)
    app = open_app("pages/evaluate.py", token=token, timeout=240)
    assert not app.exception, app.exception
    button = next(b for b in app.button if b.key == f"correct_{item['sha256'][:16]}:right")
    assert button.label == f"Relabel as {other}"  # says which label the picture will get
    button.click().run()
    assert not app.exception, app.exception
    copy = workspace / "audit" / "working_copy" / "data"
    fixed = next(s for s in check_dataset(copy).dataset.samples if s.sha256 == item["sha256"])
    assert (fixed.label, fixed.split) == (other, "val")
    assert any(f"Filed under **{other}**" in c.value for c in app.caption)


def test_train_again_compares_both_runs_on_the_same_validation_pictures(own_session):
    token, workspace, run, dataset = own_session
    app = open_app("pages/predict.py", token=token, timeout=240)
    app.file_uploader(key="pictures").set_value([("more-red.png", encoded("red", 3), "image/png")]).run()
    next(b for b in app.button if b.key == "correct_upload_0:right").click().run()
    assert not app.exception, app.exception

    app = open_app("pages/train.py", token=token, timeout=240)
    assert not app.exception, app.exception
    assert any("1 picture added" in m.value for m in app.markdown)
    next(b for b in app.button if b.key == "train_again").click().run()
    assert not app.exception, app.exception
    pairs = json.loads((workspace / "retrained.json").read_text())
    new_id = next(iter(pairs))
    assert pairs[new_id] == run.id
    status = JobManager(workspace / "runs").wait(new_id, timeout=240)
    assert status["state"] == "finished", status
    comparison = compare_runs(run.path, workspace / "runs" / new_id)
    assert comparison.pictures == len(check_dataset(dataset).dataset.val) and comparison.only_after == 0

    app = open_app("pages/train.py", token=token, timeout=240)
    assert not app.exception, app.exception
    labels = [m.label for m in app.metric]
    assert {"Accuracy before", "Accuracy now", "Wrong → right", "Right → wrong"} <= set(labels)
    names = f"{run_name(run)} → {run_name(RunDir(workspace / 'runs' / new_id))}"
    assert any(names in s.value for s in app.subheader)
    now = next(m for m in app.metric if m.label == "Accuracy now")
    assert now.value == f"{round(comparison.after_accuracy * comparison.pictures)} of {comparison.pictures}"
    change = round(100 * (comparison.after_accuracy - comparison.before_accuracy))
    assert now.delta == (f"{change:+d} points" if change else "")  # in points; no arrow for no change
    said = " ".join(m.value for m in [*app.info, *app.success, *app.warning])
    assert f"On the same {comparison.pictures} validation pictures" in said and "chance alone would give" in said
    assert app.selectbox(key="show_run").value == new_id  # the picker follows the run the page shows
    changed = comparison.wrong_to_right + comparison.right_to_wrong
    assert len(app.image) >= min(len(changed), 12)  # the changed pictures are shown, not only named
    from ui import retrain_view

    answer = json.loads((run.path / PREDICTIONS_FILE).read_text())["predictions"][0]
    thumbnail = retrain_view.change_picture(run.config, {"path": answer["path"], "sha256": answer["sha256"]})
    assert thumbnail is not None and max(thumbnail.size) <= retrain_view.THUMBNAIL
