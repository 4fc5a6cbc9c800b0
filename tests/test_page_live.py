"""The live camera's buttons on the Predict page and on demo links (AppTest), and "Download as a
web page": the view receives only the run's (or the demo's) own checked ONNX model and no path,
"Explain this frame" shows that frame with its heat map (counted on a demo), and a studio
without onnxruntime-web says what to do."""

from __future__ import annotations

import io
import json

import pytest

from apptools import open_app
from pictures import make_picture
from test_page_evaluate import all_text, trained  # noqa: F401 (the shared tiny finished run)
from test_page_share import open_demo, owner  # noqa: F401 (a session holding a copy of the run)
from test_share import exported  # noqa: F401
from transfer.serving import web_page
from transfer.serving.export import cached_export
from transfer.serving.share import DemoStore
from ui import live_view


def live_views(app) -> list:
    return [element for element in app.get("component_instance") if "live_camera" in element.proto.component_name]


def sent_model(view) -> bytes:
    return next(arg.bytes for arg in view.proto.special_args if arg.key == "model")


def sends_bytes(app) -> bool:
    """Whether this run's live view carries the model's bytes (not only its id)."""
    (view,) = live_views(app)
    return any(arg.key == "model" for arg in view.proto.special_args)


def model_id_of(app) -> str:
    (view,) = live_views(app)
    return json.loads(view.proto.json_args)["model_id"]


def open_live(app):
    next(button for button in app.button if button.label == "Live camera").click().run()
    assert not app.exception
    return app


def png_frame() -> bytes:
    buffer = io.BytesIO()
    make_picture(2, 970, (160, 120)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def runtime(monkeypatch, tmp_path):
    """onnxruntime-web's files as the install step leaves them (placeholders: AppTest runs no browser)."""
    folder = tmp_path / "ort"
    folder.mkdir()
    for name in web_page.RUNTIME_FILES:
        (folder / name).write_bytes(b"placeholder")
    monkeypatch.setattr(web_page, "RUNTIME_FOLDER", folder)
    return folder


def test_the_live_camera_button_sends_the_runs_own_model_and_closes(owner, runtime):
    token, run = owner
    app = open_app("pages/predict.py", token=token)
    assert not live_views(app)  # nothing is sent before the visitor asks
    open_live(app)
    views = live_views(app)
    assert len(views) == 1
    assert sent_model(views[0]) == cached_export(run.path, "onnx").path.read_bytes()
    arguments = json.loads(views[0].proto.json_args)
    assert arguments["info"]["classes"] == run.labels()
    assert arguments["top_k"] == app.slider(key="top_k").value
    assert str(run.path) not in views[0].proto.json_args and token not in views[0].proto.json_args
    next(button for button in app.button if button.label == "Close the live camera").click().run()
    assert not live_views(app)


def test_the_model_is_sent_on_the_first_render_only_and_again_when_the_view_asks(owner, runtime, monkeypatch):
    token, run = owner
    answers = {"value": None}  # what the browser's view returns: nothing yet, or a request for the model
    real_view = live_view._live_camera

    def view_in_browser(**arguments):
        real_view(**arguments)
        return answers["value"]

    monkeypatch.setattr(live_view, "_live_camera", view_in_browser)
    app = open_live(open_app("pages/predict.py", token=token))
    assert sends_bytes(app)
    model_id = model_id_of(app)
    for _ in range(2):  # later reruns pass only the id: no model bytes to hash, copy or send
        app.run()
        assert not app.exception and not sends_bytes(app) and model_id_of(app) == model_id
        assert json.loads(live_views(app)[0].proto.json_args)["model"] is None
    answers["value"] = {"model_id": model_id, "request": "a view drawn anew"}
    app.run()  # the request's own run sends the bytes once, in the run right after it
    assert not app.exception and sends_bytes(app)
    assert sent_model(live_views(app)[0]) == cached_export(run.path, "onnx").path.read_bytes()
    app.run()  # the same request, still the view's value, is not answered twice
    assert not sends_bytes(app)
    answers["value"] = {"model_id": model_id, "request": "drawn anew once more"}
    app.run()
    assert sends_bytes(app)
    answers["value"] = {"model_id": "some other model", "request": "a stale view"}
    app.run()
    assert not sends_bytes(app)
    next(button for button in app.button if button.label == "Close the live camera").click().run()
    open_live(app)  # a view opened again starts without the model, so it gets the bytes
    assert sends_bytes(app)


def test_explain_this_frame_shows_the_frame_and_its_heat_map(owner, runtime, monkeypatch):
    token, _ = owner
    monkeypatch.setattr(live_view, "_live_camera", lambda **arguments: b"\x00\x00\x00\x01" + png_frame())
    app = open_live(open_app("pages/predict.py", token=token))
    assert "explained camera frame" in all_text(app)
    assert len(app.image) == 2  # the frame and the Grad-CAM overlay


def test_a_demo_visitor_gets_only_the_demos_model_and_an_explained_frame_counts(owner, runtime, monkeypatch):
    _, run = owner
    token, demo = DemoStore().create(run.path, title="Colours")
    app = open_live(open_demo(token))
    views = live_views(app)
    # The demo's model without the novelty reference (its model.onnx with it stays on the server).
    assert len(views) == 1 and sent_model(views[0]) == (demo.folder / "live.onnx").read_bytes()
    app.run()  # a rerun passes only the model's id
    assert not app.exception and not sends_bytes(app)
    monkeypatch.setattr(live_view, "_live_camera", lambda **arguments: b"\x00\x00\x00\x02" + png_frame())
    app.run()
    assert not app.exception and "explained camera frame" in all_text(app)
    app.run()  # a rerun does not count the same frame again
    assert DemoStore().open(token).pictures_tried == 1


def test_without_the_browser_runtime_the_live_camera_says_what_to_do(owner, monkeypatch, tmp_path):
    monkeypatch.setattr(web_page, "RUNTIME_FOLDER", tmp_path / "missing")
    app = open_live(open_app("pages/predict.py", token=owner[0]))
    assert not live_views(app)
    assert any("(onnxruntime-web) is not installed" in error.value for error in app.error)


def test_download_as_a_web_page_is_prepared_once_then_offered(owner):
    if not web_page.runtime_ready():
        pytest.skip("onnxruntime-web is not installed (./studio installs it with npm)")
    token, run = owner
    app = open_app("pages/predict.py", token=token)
    next(button for button in app.button if button.label == "Prepare web page (zip)").click().run()
    assert not app.exception
    downloads = [button.proto.label for button in app.get("download_button")]
    assert any(label.startswith("Download as a web page (") for label in downloads), downloads
    assert cached_export(run.path, "web").path.name == f"{run.id}-web-without-reference.zip"


def test_a_model_too_large_for_the_browser_is_not_sent(owner, runtime, monkeypatch):
    monkeypatch.setattr(live_view, "MAX_MODEL_MB", 0)
    app = open_live(open_app("pages/predict.py", token=owner[0]))
    assert not live_views(app)
    assert any("too large to run in the browser" in warning.value for warning in app.warning)
