"""AppTest: "None of these" on the Predict page (pictures, webcam, zip table, strictness), the
Evaluate page (validation pictures called unknown), demo creation (strictness) and the demo page,
and the one sentence for a run trained before novelty existed."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from apptools import open_app
from test_page_evaluate import all_text, trained  # noqa: F401 (the shared tiny finished run)
from test_page_predict import encoded
from test_page_share import create_demo, new_session_token, open_demo
from test_share import exported  # noqa: F401 (the tiny run with its exports made once)
from transfer.models.novelty import NOT_AVAILABLE, REFERENCE_FILE, validation_novelty
from transfer.serving.predict import Predictor
from transfer.core.runs import RunDir
from transfer.serving.share import DemoStore


def stranger(fmt: str = "PNG") -> bytes:
    """Light dots on black: nothing like the colour classes of the shared run."""
    pixels = np.zeros((80, 80, 3), np.uint8)
    yy, xx = np.mgrid[:80, :80]
    for cy, cx in ((15, 20), (40, 60), (62, 25), (30, 45)):
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def owner(exported, transfer_home):  # noqa: F811
    """A session in this test's home holding a copy of the tiny run, and the picture pair: one
    the model calls "None of these" and one it names."""
    token = new_session_token()
    copy = transfer_home / "sessions" / token / "runs" / exported.run.id
    shutil.copytree(exported.run.path, copy)
    predictor = Predictor.from_run(copy)
    assert predictor.predict(stranger(), 1)[0].unknown and predictor.predict(stranger("JPEG"), 1)[0].unknown
    known = next(data for data in (encoded("red", i) for i in range(20)) if not predictor.predict(data, 1)[0].unknown)
    return token, RunDir(copy), known


def test_predict_page_says_none_of_these_for_pictures_webcam_and_zip(owner):
    token, run, known = owner
    label = Predictor.from_run(run.path).predict(known, 1)[0].label
    app = open_app("pages/predict.py", token=token)
    assert app.radio(key="strictness").value == "normal"
    app.file_uploader(key="pictures").set_value([("dots.png", stranger(), "image/png"),
                                                 ("red.png", known, "image/png")]).run()
    assert not app.exception
    text = all_text(app)
    assert "Prediction: **None of these** (looks unlike every class; closest:" in text
    assert f"Prediction: **{label}**" in text and text.count("Novelty ") == 2

    app.camera_input(key="webcam").set_value(("shot.jpg", stranger("JPEG"), "image/jpeg")).run()
    assert all_text(app).count("Prediction: **None of these**") == 2

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("pictures/dots.png", stranger())
        bundle.writestr("pictures/red.png", known)
    app.file_uploader(key="zip").set_value(("pictures.zip", archive.getvalue(), "application/zip")).run()
    assert not app.exception
    table = app.dataframe[0].value
    answers = dict(zip(table["file"], table["answer"]))
    assert answers["upload.zip/pictures/dots.png"].startswith("None of these")
    assert answers["upload.zip/pictures/red.png"] == label
    assert list(table["unknown"]) == [True, False] and table["novelty"].iloc[0] > table["novelty"].iloc[1]
    assert "1 look unlike every class: None of these." in all_text(app)

    app.radio(key="strictness").set_value("relaxed").run()
    assert not app.exception and "Prediction: **None of these**" in all_text(app)


def test_evaluate_page_counts_validation_pictures_called_unknown(owner):
    token, run, _ = owner
    app = open_app("pages/evaluate.py", token=token)
    assert not app.exception
    metric = next(m for m in app.metric if m.label == "Validation pictures called unknown")
    scores = validation_novelty(run.path)
    info = json.loads((run.path / "model.json").read_text())["novelty"]
    expected = sum(s > info["thresholds"]["normal"] for s in scores)
    assert metric.value == f"{expected} of {len(scores)}"
    app.radio(key="evaluate_strictness").set_value("strict").run()
    metric = next(m for m in app.metric if m.label == "Validation pictures called unknown")
    assert metric.value == f"{sum(s > info['thresholds']['strict'] for s in scores)} of {len(scores)}"


def test_demo_creation_takes_a_strictness_and_the_demo_says_none_of_these(owner):
    token, run, known = owner
    app = open_app("pages/predict.py", token=token)
    app.radio(key="share_strictness").set_value("strict")
    create_demo(app, "Colours")
    demo = DemoStore().list()[0]
    assert demo.strictness == "strict" and (demo.folder / REFERENCE_FILE).is_file()

    demo_token, _ = DemoStore().create(run.path, title="Colours")
    visitor = open_demo(demo_token)
    assert "answered \"None of these\"" in all_text(visitor)
    visitor.file_uploader(key="demo_pictures").set_value([("dots.png", stranger(), "image/png"),
                                                          ("red.png", known, "image/png")]).run()
    assert not visitor.exception
    text = all_text(visitor)
    assert "Prediction: **None of these** (looks unlike every class; closest:" in text
    assert text.count("Prediction: **None of these**") == 1


def test_a_run_trained_before_says_so_once_and_predicts_as_before(owner):
    token, run, _ = owner
    info = json.loads((run.path / "model.json").read_text())
    info.pop("novelty")
    (run.path / "model.json").write_text(json.dumps(info))
    (run.path / REFERENCE_FILE).unlink()
    shutil.rmtree(run.path / "exports")
    app = open_app("pages/predict.py", token=token)
    app.file_uploader(key="pictures").set_value(("dots.png", stranger(), "image/png")).run()
    assert not app.exception
    text = all_text(app)
    assert text.count(NOT_AVAILABLE) == 1 and "None of these**" not in text and "Prediction: **" in text
    evaluate = open_app("pages/evaluate.py", token=token)
    assert NOT_AVAILABLE in all_text(evaluate)
