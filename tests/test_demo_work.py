"""What a demo visitor can make the server compute: each picture once (whatever its name or the
number of classes shown), a visitor's picture under a lower pixel cap, and few decodes at once."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from test_page_evaluate import all_text, trained  # noqa: F401 (the shared tiny finished run)
from test_page_predict import encoded, top_k_charts
from test_page_share import open_demo, owner  # noqa: F401
from test_share import exported  # noqa: F401
from transfer.serving import explainer
from transfer.serving.server_predict import ServerPredictor
from transfer.serving.share import DemoStore
from ui import demo_view, predict_view


class CountingExplainer:
    def __init__(self):
        self.calls = 0

    def explain(self, run_path, data):
        self.calls += 1
        return explainer.HeatMap(np.zeros((8, 8, 3), np.uint8), "a test heat map")


def test_one_picture_under_many_names_and_with_every_top_k_is_computed_and_counted_once(owner, monkeypatch):
    st.cache_data.clear()
    predictions = []
    original = ServerPredictor.predict
    monkeypatch.setattr(ServerPredictor, "predict",
                        lambda self, *a, **k: predictions.append(1) or original(self, *a, **k))
    heat_maps = CountingExplainer()
    monkeypatch.setattr(explainer, "shared_explainer", lambda: heat_maps)
    token, _ = DemoStore().create(owner[1].path)
    app = open_demo(token)
    app.toggle(key="demo_cam").set_value(True).run()
    picture = encoded("green", 31)
    app.file_uploader(key="demo_pictures").set_value(
        [(f"copy-{index}.png", picture, "image/png") for index in range(5)]).run()
    assert not app.exception and len(top_k_charts(app)) == 5
    classes = len(owner[1].labels())
    for shown in range(1, classes + 1):
        app.slider(key="demo_top_k").set_value(shown).run()
        assert all(len(chart["y"]) == shown for chart in top_k_charts(app))
    assert (len(predictions), heat_maps.calls) == (1, 1)
    assert DemoStore().open(token).pictures_tried == 1


def test_a_visitors_picture_over_the_demo_pixel_cap_is_refused_before_any_work(owner):
    token, _ = DemoStore().create(owner[1].path)
    app = open_demo(token)
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 4000), "red").save(buffer, format="PNG")  # 20 MP: an owner's page takes it
    app.file_uploader(key="demo_pictures").set_value(("huge.png", buffer.getvalue(), "image/png")).run()
    assert not app.exception and not top_k_charts(app)
    assert any("up to 16 megapixels" in w.value and "5000 x 4000" in w.value for w in app.warning)
    assert DemoStore().open(token).pictures_tried == 0


def test_pictures_are_decoded_in_the_web_server_a_few_at_a_time(owner, monkeypatch):
    st.cache_data.clear()
    running, most = [0], [0]
    lock = threading.Lock()
    from transfer.data import images

    original = images.thumbnail

    def slow_thumbnail(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return original(*args, **kwargs)

    monkeypatch.setattr(images, "thumbnail", slow_thumbnail)
    run = owner[1]
    version = predict_view.weights_version(run)
    pictures = [encoded("red", 40 + index) for index in range(8)]
    threads = [threading.Thread(target=predict_view.predict_picture,
                                args=(str(run.path), version, predict_view.digest(data), "p.png", data, 1, False))
               for data in pictures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2  # TRANSFER_SERVER_DECODES unset: two at a time


def test_reruns_of_a_demo_read_neither_its_bundle_nor_its_live_model_again(owner, monkeypatch, tmp_path):
    from test_page_live import live_views, open_live
    from transfer.serving import web_page

    placeholders = tmp_path / "ort"  # onnxruntime-web's files as installed: AppTest runs no browser
    placeholders.mkdir()
    for name in web_page.RUNTIME_FILES:
        (placeholders / name).write_bytes(b"placeholder")
    monkeypatch.setattr(web_page, "RUNTIME_FOLDER", placeholders)
    token, demo = DemoStore().create(owner[1].path, allow_download=True)
    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or original(self))
    app = open_live(open_demo(token))
    assert live_views(app)
    for _ in range(3):
        app.run()
    assert not app.exception
    assert "bundle.zip" not in reads  # read when a visitor clicks the download, not on every rerun
    assert reads.count("live.onnx") <= 1  # once per model version for the whole server
