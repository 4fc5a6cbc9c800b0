"""A real browser drops a picture on the Predict page of a finished run and sees the prediction."""

from __future__ import annotations

import re

import pytest

from browsertools import wait_for_app
from waiting import wait_for
from transfer.runtime.access import issue_session_token
from transfer.training.config import TrainConfig
from transfer.runtime.jobs import JobManager
from transfer.serving.predict import Predictor

pytestmark = pytest.mark.browser


def shown_answer(prediction) -> str:
    """What the page names: the class, or "None of these" for a picture unlike the training ones."""
    return "None of these" if prediction.unknown else prediction.label


@pytest.fixture
def finished_run(studio, tmp_path, write_class_folders):
    """A session token whose workspace in the server's home holds one tiny finished run.

    The run is trained here, through the job manager, with the server's ``TRANSFER_HOME``: the
    server finds it exactly as if its Train page had started it.
    """
    dataset = write_class_folders(tmp_path / "colours", {"red": 10, "green": 10, "blue": 10})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(studio.home))
        patch.setenv("TRANSFER_OFFLINE", "1")
        token = issue_session_token()  # signed with the server's secret, as the server would
        manager = JobManager(studio.home / "sessions" / token / "runs")
        config = TrainConfig.for_method("features", dataset=str(dataset), epochs=2, image_size=64)
        run = manager.submit(config.to_dict())
        status = manager.wait(run.id, timeout=180)
    assert status["state"] == "finished", status
    return token, run


def test_dropping_a_picture_shows_its_prediction(studio, page, finished_run, make_picture, tmp_path):
    token, run = finished_run
    picture = tmp_path / "a red one.png"
    make_picture(0, 900, (96, 80)).save(picture)
    label = shown_answer(Predictor.from_run(run.path).predict(picture, 1)[0])

    page.goto(f"{studio}/predict?s={token}")
    wait_for_app(page)
    page.get_by_role("heading", name="Predict").wait_for()
    page.wait_for_url(re.compile(rf"run={run.id}"))  # the finished run is chosen and linked
    drop_picture(page, picture)

    page.get_by_text(f"Prediction: {label}", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("a red one.png").first.wait_for()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()  # the top-k bars


def drop_picture(page, picture) -> None:
    """Hand the picture to the uploader, and again if it was lost. In a new session the page
    replaces the uploader's file input 25 to 70 ms after it first appears (one script run only:
    measured with a tag on the input's node), and a picture handed to the first one in that window
    is lost. A person cannot drop that fast; a test hands the picture the moment the input exists."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def dropped() -> bool:
        wait_for_app(page)
        page.locator('input[type="file"]').first.set_input_files(str(picture))
        try:
            page.get_by_text(picture.name).first.wait_for(timeout=15_000)
        except PlaywrightTimeout:
            return False
        return True

    wait_for(dropped, "the picture to reach the uploader", timeout=180)
