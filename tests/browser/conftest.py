"""A live studio server and Debian's chromium driven by Playwright, for the journey tests.

The server runs as ``./studio app`` runs it (``python -m ui.launch``, which starts ``streamlit run
app.py`` on this computer only) on a free port with its own ``TRANSFER_HOME``. The
browser is the system chromium (Playwright's own browser download is not used). Without
chromium or playwright the tests skip, unless ``TRANSFER_REQUIRE_BROWSER=1`` (set by CI)
turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browsertools import free_port, start_studio, stop_studio

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _chromium() -> str | None:
    return shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None


def _missing(reason: str):
    if os.environ.get("TRANSFER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests are required here but {reason}")
    pytest.skip(reason)


class Studio(str):
    """The server's base URL (a plain string) that also knows the server's ``TRANSFER_HOME``."""

    home: Path


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A freshly started studio server with an empty home: its URL, with ``.home`` attached."""
    home = tmp_path_factory.mktemp("browser_home")
    port = free_port()
    process = start_studio(home, port)
    url = Studio(f"http://127.0.0.1:{port}")
    url.home = home
    try:
        yield url
    finally:
        stop_studio(process)


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
