"""Predict page (AppTest) over a real, tiny finished run: dropped pictures get their top-k, a
Grad-CAM overlay on request, the webcam works the same, a zip gives a table and a CSV download,
and a broken file gets a sentence instead of a traceback."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from apptools import open_app
from pictures import make_picture as _make_picture
from test_page_evaluate import TrainedSession, all_text, chart_specs, in_trained_home, trained  # noqa: F401 (fixtures)
from transfer.serving.predict import Predictor

CLASS_ORDER = ["red", "green", "blue"]  # colour index of conftest's picture generator


def encoded(class_name: str, index: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    _make_picture(CLASS_ORDER.index(class_name), 500 + index, (80, 64)).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_label(trained: TrainedSession, data: bytes) -> str:
    """What the page names: the class, or "None of these" for a picture unlike the training ones
    (these pictures are larger than the run's, so some look unlike them in the backbone's eyes)."""
    prediction = Predictor.from_run(trained.run.path).predict(data, 1)[0]
    return "None of these" if prediction.unknown else prediction.label


def top_k_charts(app) -> list[dict]:
    return [trace for spec in chart_specs(app) for trace in spec["data"]
            if trace["type"] == "bar" and trace.get("orientation") == "h"]


def predict_page(trained: TrainedSession):
    app = open_app("pages/predict.py", token=trained.token)
    assert not app.exception
    return app


def test_dropped_pictures_get_their_top_k(in_trained_home):
    trained = in_trained_home
    app = predict_page(trained)
    red_png, blue_jpeg = encoded("red", 0), encoded("blue", 1, "JPEG")
    app.file_uploader(key="pictures").set_value([("red.png", red_png, "image/png"),
                                                 ("blue.jpg", blue_jpeg, "image/jpeg")]).run()
    assert not app.exception
    bars = top_k_charts(app)
    assert len(bars) == 2
    assert all(len(trace["y"]) == 3 for trace in bars)  # the default: three classes (all of them here)
    assert all(abs(sum(trace["x"]) - 1) < 1e-3 for trace in bars)
    text = all_text(app)
    for data in (red_png, blue_jpeg):
        assert f"Prediction: **{expected_label(trained, data)}**" in text
    assert len(app.image) == 2

    app.slider(key="top_k").set_value(1).run()
    assert [len(trace["y"]) for trace in top_k_charts(app)] == [1, 1]


def test_grad_cam_overlay_appears_behind_the_toggle(in_trained_home):
    app = predict_page(in_trained_home)
    app.file_uploader(key="pictures").set_value(("green.png", encoded("green", 2), "image/png")).run()
    assert len(app.image) == 1
    app.toggle(key="show_cam").set_value(True).run()
    assert not app.exception
    assert len(app.image) == 2  # the picture and its heat map
    assert any("Where the model looked" in (caption or "") for img in app.image for caption in img.captions)


def test_webcam_picture_is_predicted_like_an_upload(in_trained_home):
    trained = in_trained_home
    app = predict_page(trained)
    photo = encoded("red", 3, "JPEG")
    app.camera_input(key="webcam").set_value(("shot.jpg", photo, "image/jpeg")).run()
    assert not app.exception
    assert len(top_k_charts(app)) == 1
    assert f"Prediction: **{expected_label(trained, photo)}**" in all_text(app)


def test_broken_file_gets_a_sentence_not_a_traceback(in_trained_home):
    app = predict_page(in_trained_home)
    app.file_uploader(key="pictures").set_value([("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"),
                                                 ("fine.png", encoded("red", 4), "image/png")]).run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and errors[0].startswith("broken.png cannot be used:")
    assert "Traceback" not in errors[0]
    assert len(top_k_charts(app)) == 1  # the good picture is still predicted


@pytest.fixture
def recorded_downloads(monkeypatch) -> list[MemoryMediaFileStorage]:
    """AppTest keeps download data in an in-memory media store it discards; keep a handle on it."""
    stores: list[MemoryMediaFileStorage] = []

    class RecordingStorage(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    return stores


def csv_buttons(app) -> list:
    """The zip's CSV download (the page also offers the model's downloads, see test_export)."""
    return [button for button in app.get("download_button") if "CSV" in button.proto.label]


def downloaded(app, stores) -> bytes:
    url = csv_buttons(app)[0].proto.url
    return stores[-1].get_file(url.rsplit("/", 1)[1]).content


def test_zip_gives_a_table_and_a_csv_with_one_row_per_picture(in_trained_home, recorded_downloads):
    trained = in_trained_home
    buffer = io.BytesIO()
    names = [f"batch/{colour}_{i}.png" for colour in CLASS_ORDER for i in range(2)]
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, name in enumerate(names):
            archive.writestr(name, encoded(name.split("/")[1].split("_")[0], 10 + index))
        archive.writestr("batch/notes.txt", "not a picture")
    app = predict_page(trained)
    app.file_uploader(key="zip").set_value(("batch.zip", buffer.getvalue(), "application/zip")).run()
    assert not app.exception
    assert "6 pictures predicted, 1 files skipped" in all_text(app)
    table = app.dataframe[0].value
    assert len(table) == 7

    rows = list(csv.DictReader(io.StringIO(downloaded(app, recorded_downloads).decode())))
    predicted = [row for row in rows if not row["skipped"]]
    assert sorted(row["file"] for row in predicted) == sorted(f"upload.zip/{name}" for name in names)
    predictor = Predictor.from_run(trained.run.path)
    with zipfile.ZipFile(buffer) as archive:
        for row in predicted:
            data = archive.read(row["file"].split("/", 1)[1])
            assert row["label"] == predictor.predict(data, 1)[0].label
    skipped = [row for row in rows if row["skipped"]]
    assert len(skipped) == 1 and skipped[0]["file"].endswith("notes.txt")
    assert skipped[0]["skipped"].startswith("not an image")


def test_a_damaged_zip_gets_a_sentence(in_trained_home):
    app = predict_page(in_trained_home)
    app.file_uploader(key="zip").set_value(("broken.zip", b"PK\x03\x04 definitely not a zip", "application/zip")).run()
    assert not app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith("The zip cannot be used:")
    assert not csv_buttons(app)


def test_predict_without_a_finished_run_points_to_training():
    app = open_app("pages/predict.py")
    assert not app.exception
    assert "no finished run in this session yet" in all_text(app)
    assert not app.file_uploader


def test_predict_keeps_the_run_from_the_link(in_trained_home):
    trained = in_trained_home
    app = open_app(None, token=trained.token)
    app.query_params["run"] = trained.run.id
    app.switch_page("pages/predict.py").run()
    assert not app.exception
    assert app.selectbox(key="predict_run").value == trained.run.id
    assert json.loads((trained.run.path / "labels.json").read_text())["classes"]


def test_a_close_call_reads_not_sure_and_names_both_classes(in_trained_home, monkeypatch):
    from transfer.analysis.trust import UnsureMargin
    from ui import predict_view

    trained = in_trained_home
    # Every answer counts as close here: the margin is measured per run in transfer.analysis.trust.
    monkeypatch.setattr(predict_view, "unsure_margin", lambda *_: UnsureMargin(1.01, "101 points (for the test)"))
    app = predict_page(trained)
    app.slider(key="top_k").set_value(1).run()
    app.file_uploader(key="pictures").set_value([("red.png", encoded("red", 0), "image/png")]).run()
    assert not app.exception, app.exception
    prediction = Predictor.from_run(trained.run.path).predict(encoded("red", 0), 2)[0]
    first, second = prediction.labels[:2]
    text = all_text(app)
    if not prediction.unknown:  # "None of these" stays distinct and comes first
        assert f"Prediction: **not sure: {first} or {second}**" in text
        assert "The two likeliest classes are closer than 101 points" in text
    assert [len(trace["y"]) for trace in top_k_charts(app)] == [1]  # the bars still show what was asked for


def test_the_run_picker_starts_on_the_best_finished_run_and_says_so(in_trained_home):
    import shutil

    trained = in_trained_home
    worse = trained.runs_dir / "29991231-235959-worse"
    shutil.copytree(trained.run.path, worse)
    try:
        status = json.loads((worse / "status.json").read_text())
        status.update(created_at=status.get("created_at", 0) + 3600, val_correct=0, val_total=9, val_accuracy=0.0,
                      best_val_accuracy=0.0)
        (worse / "status.json").write_text(json.dumps(status))
        app = predict_page(trained)
        assert app.selectbox(key="predict_run").value == trained.run.id  # not the newest (worse) run
        assert any("best finished run on the current data set" in c.value for c in app.caption)
        assert " of " in app.selectbox(key="predict_run").format_func(trained.run.id)  # counts, not 100.0 %
    finally:
        shutil.rmtree(worse)
