"""The very first request to a freshly started server is a link into a page: it must show the
studio's own navigation and sidebar (never Streamlit's raw list of ``pages/`` files with an
"app" entry), also after a restart with a run in progress, also behind the password; and the
toolbar offers users no Deploy button or developer menu."""

from __future__ import annotations

import re

import pytest

from browsertools import free_port, start_studio, stop_studio, wait_for_app
from waiting import wait_for
from transfer.runtime.access import issue_session_token, session_dir
from transfer.training.config import TrainConfig
from transfer.runtime.jobs import JobManager

pytestmark = pytest.mark.browser

STUDIO_NAVIGATION = ["Home", "Data", "Configure", "Train", "Evaluate", "Predict"]


def navigation_labels(page) -> list[str]:
    page.locator('[data-testid="stSidebarNav"]').wait_for(timeout=60_000)
    links = page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
    return [link.strip().splitlines()[-1].strip() for link in links]  # the icon comes first


class Servers:
    """Studio servers started by one test, each with nobody having visited it yet."""

    def __init__(self, home):
        self.home, self.running = home, {}

    def start(self, extra_env: dict | None = None, port: int | None = None, plain_streamlit: bool = False) -> str:
        port = port or free_port()
        self.running[port] = start_studio(self.home, port, extra_env, plain_streamlit=plain_streamlit)
        return f"http://127.0.0.1:{port}"

    def stop(self, url: str) -> None:
        stop_studio(self.running.pop(int(url.rsplit(":", 1)[1])))


@pytest.fixture
def servers(tmp_path):
    started = Servers(tmp_path)
    yield started
    for process in started.running.values():
        stop_studio(process)


def test_a_link_into_a_page_as_the_first_visit_shows_the_studio(servers, page):
    url = servers.start()
    page.goto(f"{url}/predict")
    wait_for_app(page)
    assert navigation_labels(page) == STUDIO_NAVIGATION
    page.get_by_role("heading", name="Predict").wait_for()
    page.locator('[data-testid="stSidebar"]').get_by_text("Device:").wait_for()
    assert re.search(r"/predict\?s=[\w-]+$", page.url)

    # A product's toolbar: no Deploy button, no developer menu (also not on localhost).
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0
    assert page.locator('[data-testid="stMainMenu"]').count() == 0


@pytest.mark.parametrize("link", ["train?run=20260101-000000-abcdef", "data"])
def test_a_server_started_by_plain_streamlit_run_shows_the_studio_first_too(servers, page, link):
    url = servers.start(plain_streamlit=True)  # not the launcher: the page hands over to app.py
    page.goto(f"{url}/{link}")
    wait_for_app(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("Device:").wait_for(timeout=60_000)
    assert navigation_labels(page) == STUDIO_NAVIGATION
    assert page.url.startswith(f"{url}/{link.split('?')[0]}")


def test_after_a_restart_the_link_of_a_running_run_finds_it_first_thing(servers, page, tmp_path,
                                                                       write_class_folders, monkeypatch):
    url = servers.start()
    monkeypatch.setenv("TRANSFER_HOME", str(servers.home))  # the worker process trains in the server's home
    token = issue_session_token()  # signed with the server's secret, as the Train page's session is
    dataset = write_class_folders(tmp_path / "data" / "colours", {"red": 6, "green": 6})
    manager = JobManager(session_dir(token) / "runs")
    # Training from scratch for ever: a features run fits its head once and would finish during the restart.
    config = TrainConfig.for_method("scratch", dataset=str(dataset), epochs=10_000, image_size=64)
    run = manager.submit(config.to_dict())
    try:
        def is_training() -> bool:
            assert run.status()["state"] in ("queued", "running"), run.status()
            return run.status()["state"] == "running"

        wait_for(is_training, "the run to start", timeout=180, interval=0.5)

        servers.stop(url)  # the restart: the same home and port, the run still training
        url = servers.start(port=int(url.rsplit(":", 1)[1]))
        page.goto(f"{url}/train?run={run.id}&s={token}")
        wait_for_app(page)
        assert navigation_labels(page) == STUDIO_NAVIGATION
        page.get_by_role("heading", name=re.compile(r": running$")).wait_for(timeout=60_000)  # headed by its name
        page.get_by_text(f"run {run.id}", exact=False).first.wait_for(timeout=30_000)
        assert f"s={token}" in page.url and f"run={run.id}" in page.url
    finally:
        manager.cancel(run.id)


def test_behind_a_password_a_link_into_a_page_shows_only_the_password_then_that_page(servers, page):
    url = servers.start({"TRANSFER_PASSWORD": "correct horse"})
    page.goto(f"{url}/train?run=unknown")
    wait_for_app(page)
    field = page.locator('input[type="password"]')
    field.wait_for(timeout=60_000)
    assert page.locator("input").count() == 1
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    assert page.locator("h1, h2, h3").count() == 0
    assert "s=" not in page.url  # no session before the password

    field.fill("wrong horse")
    field.press("Enter")
    page.get_by_text("That is not the password").wait_for(timeout=30_000)
    assert page.locator("h1").count() == 0

    page.locator('input[type="password"]').fill("correct horse")
    page.locator('input[type="password"]').press("Enter")
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    assert navigation_labels(page) == STUDIO_NAVIGATION
    assert "/train?" in page.url and re.search(r"[?&]s=[\w-]+", page.url)

    # The unlocked browser stays unlocked on a refresh (its cookie, read when it connects again).
    page.reload()
    wait_for_app(page)
    page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
    assert page.locator('input[type="password"]').count() == 0

    # The unlock belongs to this browser (a cookie), not to the link: the same ?s= link opened in
    # another browser asks for the password and shows nothing of the session.
    assert any(cookie["name"] == "transfer_unlocked" for cookie in page.context.cookies())
    other_browser = page.context.browser.new_context()
    try:
        stranger = other_browser.new_page()
        stranger.goto(page.url)
        wait_for_app(stranger)
        stranger.locator('input[type="password"]').wait_for(timeout=60_000)
        assert stranger.locator('[data-testid="stSidebarNav"]').count() == 0
        assert stranger.locator("h1, h2, h3").count() == 0
    finally:
        other_browser.close()
