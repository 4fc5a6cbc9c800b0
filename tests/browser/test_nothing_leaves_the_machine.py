"""Nothing leaves the machine: every page of the studio, a demo link and an exported web page,
loaded in chromium, ask only their own server for anything. Every request the browser makes is
recorded (and every address the page's HTML points a fetch at: icons, scripts, styles, pictures,
frames), and any other host fails the test."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from browsertools import wait_for_app
from test_predict_journey import finished_run  # noqa: F401 (a tiny finished run in the server's home)
from transfer.serving.export import export_run
from transfer.serving.share import DemoStore
from transfer.serving.web_page import runtime_ready
from webtools import serve_folder, wait_until_ready

pytestmark = pytest.mark.browser

PAGES = ["", "data", "configure", "train", "evaluate", "predict"]
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-extension"}
# Where a page's HTML makes the browser fetch something (links to other sites are not fetches).
FETCHED_ADDRESSES = """() => Array.from(document.querySelectorAll(
    'link[href], script[src], img[src], iframe[src], source[src], video[src], audio[src]'))
  .map((element) => element.href || element.src)"""


class Recorder:
    """Every address the browser asked for, and every address a page's HTML points a fetch at."""

    def __init__(self, page):
        self.page = page
        self.addresses: list[str] = []
        page.on("request", lambda request: self.addresses.append(request.url))

    def look(self) -> None:
        self.addresses += self.page.evaluate(FETCHED_ADDRESSES)
        for frame in self.page.frames[1:]:
            try:
                self.addresses += frame.evaluate(FETCHED_ADDRESSES)
            except Exception:  # a frame that went away while looking holds nothing any more
                pass

    def elsewhere(self, own: str) -> list[str]:
        host = urlsplit(own).netloc
        return sorted({address for address in self.addresses
                       if urlsplit(address).scheme not in LOCAL_SCHEMES and urlsplit(address).netloc != host})


def settle(page) -> None:
    wait_for_app(page)
    page.wait_for_timeout(1500)  # late fetches: the icon, fonts, frames of components


def test_every_page_a_demo_link_and_a_web_page_ask_only_their_own_server(studio, browser, finished_run, tmp_path,
                                                                          make_picture):
    token, run = finished_run
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    recorder = Recorder(page)
    try:
        for name in PAGES:
            page.goto(f"{studio}/{name}?s={token}")
            settle(page)
            recorder.look()
        picture = tmp_path / "red.png"
        make_picture(0, 900, (96, 80)).save(picture)
        page.goto(f"{studio}/predict?s={token}&run={run.id}")
        settle(page)
        page.locator('input[type="file"]').first.set_input_files(str(picture))
        page.get_by_text("Prediction", exact=False).first.wait_for(timeout=240_000)
        settle(page)
        recorder.look()

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TRANSFER_HOME", str(studio.home))
            demo_token, _ = DemoStore().create(run.path, title="Colours")
        page.goto(f"{studio}/?demo={demo_token}")
        page.get_by_role("heading", name="Colours").wait_for()
        settle(page)
        page.locator('input[type="file"]').first.set_input_files(str(picture))
        page.get_by_text("Prediction", exact=False).first.wait_for(timeout=240_000)
        settle(page)
        recorder.look()
        assert len(recorder.addresses) > 20  # the recorder saw the pages' own requests
        assert recorder.elsewhere(studio) == []
    finally:
        context.close()


def test_an_exported_web_page_asks_only_the_folder_it_is_served_from(browser, finished_run, tmp_path, make_picture):
    if not runtime_ready():
        pytest.skip("onnxruntime-web is not installed (./studio installs it with npm)")
    _, run = finished_run
    folder = tmp_path / "page"
    export_run(run.path, "web", folder)
    picture = tmp_path / "red.png"
    make_picture(0, 900, (96, 80)).save(picture)
    context = browser.new_context()
    page = context.new_page()
    recorder = Recorder(page)
    try:
        with serve_folder(folder) as url:
            page.goto(url)
            wait_until_ready(page)
            page.locator("#files").set_input_files(str(picture))
            page.wait_for_function("() => Number(document.querySelector('#result').dataset.count || 0) > 0")
            recorder.look()
            assert any(address.endswith("model.onnx") for address in recorder.addresses)
            assert recorder.elsewhere(url) == []

            # A close call reads "not sure: a or b" on the web page too (here every answer is close).
            info = json.loads((folder / "model.json").read_text())
            assert 0 < info["unsure_margin"] <= 0.3  # measured on the run's validation answers
            (folder / "model.json").write_text(json.dumps({**info, "unsure_margin": 1.01}))
            page.reload()
            wait_until_ready(page)
            page.locator("#files").set_input_files(str(picture))
            page.wait_for_function("() => Number(document.querySelector('#result').dataset.count || 0) > 0")
            if page.locator("#result").get_attribute("data-unknown") != "true":
                assert page.locator("#result").inner_text().startswith("not sure: ")
                assert page.locator(".unsure").first.inner_text().startswith("not sure: ")
            assert recorder.elsewhere(url) == []
    finally:
        context.close()
