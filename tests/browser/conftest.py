"""A live studio server and Debian's chromium driven by Playwright, for the journey tests.

The server runs ``streamlit run app.py`` on a free port with its own ``TRANSFER_HOME``. The
browser is the system chromium (Playwright's own browser download is not used). Without
chromium or playwright the tests skip, unless ``TRANSFER_REQUIRE_BROWSER=1`` (set by CI)
turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the studio server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the studio server did not start within 90 s")


class Studio(str):
    """The server's base URL (a plain string) that also knows the server's ``TRANSFER_HOME``."""

    home: Path


def start_studio(home: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free local port with ``home`` as its ``TRANSFER_HOME``,
    offline; returns the process and its URL once it serves (its output goes to server.log)."""
    port = _free_port()
    env = {**os.environ, "TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1"}
    with open(home / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process)
    except RuntimeError:
        stop_studio(process)
        raise
    return process, url


def stop_studio(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A freshly started studio server with an empty home: its URL, with ``.home`` attached."""
    home = tmp_path_factory.mktemp("browser_home")
    process, address = start_studio(home)
    url = Studio(address)
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
