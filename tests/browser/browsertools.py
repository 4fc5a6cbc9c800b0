"""Small waits that make browser tests follow Streamlit's rhythm, and starting a studio server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_for_app(page) -> None:
    """Wait until Streamlit has finished its current script run."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=60_000,
    )


def free_port() -> int:
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


def start_studio(home: Path, port: int, extra_env: dict | None = None, *,
                 plain_streamlit: bool = False) -> subprocess.Popen:
    """``./studio app``'s server (``python -m ui.launch``) on ``port`` with ``home``; returns once it
    serves. ``plain_streamlit`` starts ``streamlit run app.py`` instead, bypassing the launcher."""
    env = {key: value for key, value in os.environ.items() if key not in ("TRANSFER_HOST", "TRANSFER_PASSWORD")}
    env.update({"TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1", **(extra_env or {})})
    server = ["streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1"] if plain_streamlit \
        else ["ui.launch"]
    log = open(home / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", *server, "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}", process)
    except BaseException:
        stop_studio(process)
        raise
    return process


def stop_studio(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
