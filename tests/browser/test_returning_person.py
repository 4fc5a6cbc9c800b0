"""The returning person: a browser with a normal, persistent profile trains a model, is closed,
and the next time types the studio's address, with no link, and finds the project and its run
on Home and on Predict. On a studio with a password, another browser profile sees none of them.
Screenshots of what the person sees are kept in the test's folder."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from browsertools import free_port, start_studio, stop_studio, wait_for_app
from waiting import wait_for
from conftest import CHROMIUM_FLAGS

pytestmark = pytest.mark.browser
SCREENSHOTS_ENV = "TRANSFER_SCREENSHOTS"  # a folder to keep the screenshots in (else the test's own)


def chromium() -> str:
    executable = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium")
    if not executable:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return executable


class Profile:
    """One person's browser profile on disk: opened, closed and opened again like a real browser."""

    def __init__(self, playwright, folder: Path, shots: Path):
        self.playwright, self.folder, self.shots = playwright, folder, shots
        self.context = None

    def open(self):
        self.context = self.playwright.chromium.launch_persistent_context(
            str(self.folder), executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        page = self.context.pages[0] if self.context.pages else self.context.new_page()
        page.set_default_timeout(60_000)
        return page

    def close(self) -> None:
        self.context.close()
        self.context = None

    def shot(self, page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    with sync_playwright() as running:
        yield running


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def go(page, url: str) -> None:
    page.goto(url)
    page.wait_for_url(re.compile(r"[?&]s=[\w-]+"))
    wait_for_app(page)


def use_demo_data(page, studio: str) -> None:
    go(page, f"{studio}/data")
    page.get_by_role("tab", name="Demo data").click()
    page.get_by_role("button", name="Use the demo data set").click()
    page.get_by_text("ready for training", exact=False).first.wait_for(timeout=120_000)


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def test_a_returning_person_finds_the_project_and_its_run(playwright, tmp_path, shots):
    port = free_port()
    (tmp_path / "home").mkdir()
    server = start_studio(tmp_path / "home", port)
    studio = f"http://127.0.0.1:{port}"
    person = Profile(playwright, tmp_path / "profile", shots)
    try:
        page = person.open()
        use_demo_data(page, studio)
        go(page, f"{studio}/train")
        page.get_by_role("button", name="Start training").click()
        page.get_by_role("heading", name=re.compile(r"Lite0 feature transfer, .*: finished")).wait_for(timeout=300_000)
        person.shot(page, "1-trained")
        person.close()  # the browser is closed; the next day the person types the address

        page = person.open()
        go(page, studio)
        assert "Your projects" in page.inner_text("body")
        card = page.get_by_text(re.compile(r"4 classes · \d+ pictures · 1 run, best \d+ of \d+ \(\d+ %\)"))
        card.wait_for(timeout=60_000)
        sidebar(page).get_by_text(re.compile(r"Project: Untitled project, ")).wait_for()
        sidebar(page).get_by_text("Data set: demo data", exact=False).wait_for()
        person.shot(page, "2-home-next-day")

        page.goto(f"{studio}/predict")  # no link: the project opened last is continued
        wait_for_app(page)
        picker = page.locator('[data-testid="stSelectbox"]').first
        picker.wait_for(timeout=60_000)
        person.shot(page, "3-predict-next-day")
        assert "There is no finished run" not in page.inner_text("body")
        shown = picker.inner_text() + " ".join(field.input_value() for field in picker.locator("input").all())
        assert re.search(r"Lite0 feature transfer, .* · \d+ of \d+ \(\d+ %\)", shown), shown
        person.close()
    finally:
        if person.context is not None:
            person.close()
        stop_studio(server)


def test_behind_a_password_another_profile_sees_none_of_them(playwright, tmp_path, shots):
    port = free_port()
    (tmp_path / "home").mkdir()
    server = start_studio(tmp_path / "home", port, {"TRANSFER_PASSWORD": "correct horse"})
    studio = f"http://127.0.0.1:{port}"
    owner = Profile(playwright, tmp_path / "owner", shots)
    stranger = Profile(playwright, tmp_path / "stranger", shots)
    try:
        page = unlocked(owner.open(), studio)
        page.get_by_role("heading", name="Transfer Studio").wait_for(timeout=60_000)
        use_demo_data(page, studio)
        owner.close()

        page = owner.open()  # the owner's browser the next day: its cookies, no link
        go(page, studio)
        page.get_by_text(re.compile(r"4 classes · \d+ pictures")).wait_for(timeout=60_000)
        assert any(c["name"] == "transfer_projects" for c in owner.context.cookies())
        assert all("transfer_projects" not in part for part in page.url.split("?"))
        owner.shot(page, "4-password-owner-next-day")
        owner.close()

        page = unlocked(stranger.open(), studio)
        page.get_by_role("heading", name="Your projects").wait_for(timeout=60_000)
        wait_for_app(page)
        body = page.inner_text("body")
        assert "classes ·" not in body and "data set: demo data set" not in body.lower()
        page.get_by_text("Nothing here yet", exact=False).wait_for()
        stranger.shot(page, "5-password-stranger")
        stranger.close()
    finally:
        for profile in (owner, stranger):
            if profile.context is not None:
                profile.close()
        stop_studio(server)


def unlocked(page, studio: str):
    """A fresh browser at the studio's address, past its password page."""
    page.goto(studio)
    wait_for_app(page)
    page.locator('input[type="password"]').fill("correct horse")
    page.locator('input[type="password"]').press("Enter")
    # The page hands the unlock key to the browser as a cookie a moment after it opens; a person
    # who goes to another page before that is asked again, so wait for it as they would.
    wait_for(lambda: any(cookie["name"] == "transfer_unlocked" for cookie in page.context.cookies()),
             "the browser to hold its unlock cookie", timeout=120)
    return page
