""""None of these" in a real browser: a visitor of a demo link drops a picture unlike every class
and reads "None of these" with the closest class named second, while a picture of a class is
still named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from browsertools import wait_for_app
from test_predict_journey import finished_run  # noqa: F401 (a tiny finished run in the server's home)
from transfer.serving.predict import Predictor
from transfer.serving.share import DemoStore

pytestmark = pytest.mark.browser


def dots(path):
    """Light dots on black: nothing like the colour classes of the tiny run."""
    pixels = np.zeros((96, 96, 3), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((15, 20), (50, 70), (75, 25), (35, 50)):
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < 81] = 255
    Image.fromarray(pixels).save(path)
    return path


def test_a_demo_visitor_reads_none_of_these_for_a_stranger(studio, page, finished_run, make_picture, tmp_path,
                                                          monkeypatch):
    _, run = finished_run
    stranger = dots(tmp_path / "church.png")
    known = tmp_path / "red.png"
    predictor = Predictor.from_run(run.path)
    for index in range(900, 920):  # a red picture like the training ones, that the model names
        make_picture(0, index).save(known)
        if not predictor.predict(known, 1)[0].unknown:
            break
    assert predictor.predict(stranger, 1)[0].unknown and not predictor.predict(known, 1)[0].unknown
    label = predictor.predict(known, 1)[0].label
    monkeypatch.setenv("TRANSFER_HOME", str(studio.home))
    token, _ = DemoStore().create(run.path, title="Colours")

    page.goto(f"{studio}/?demo={token}")
    page.get_by_role("heading", name="Colours").wait_for()
    wait_for_app(page)
    page.locator('input[type="file"]').first.set_input_files([str(stranger), str(known)])
    page.get_by_text("Prediction: None of these", exact=False).first.wait_for()
    page.get_by_text(f"Prediction: {label}", exact=False).first.wait_for()
    body = page.inner_text("body")
    assert "looks unlike every class; closest:" in body
    assert body.count("Prediction: None of these") == 1
