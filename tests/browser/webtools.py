"""Helpers the browser-model tests and benchmarks share: serving a web page export over HTTP and
reading its answers for pictures in headless chromium."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None


def fake_camera_flags(video: Path) -> list[str]:
    """Chromium's fake camera, playing ``video`` (a y4m file) in a loop, allowed without asking."""
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]


def y4m_from_picture(picture: Path, target: Path, width: int = 640, height: int = 480, frames: int = 30) -> Path:
    """A short y4m video (4:2:0) of ``picture``, slowly panning so that frames differ."""
    import numpy as np
    from PIL import Image

    image = Image.open(picture).convert("RGB").resize((width + frames * 2, height))
    with open(target, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(frames):
            frame = image.crop((index * 2, 0, index * 2 + width, height)).convert("YCbCr")
            y, cb, cr = (np.asarray(channel) for channel in frame.split())
            out.write(b"FRAME\n")
            out.write(y.tobytes())
            for chroma in (cb, cr):
                out.write(np.asarray(Image.fromarray(chroma).resize((width // 2, height // 2))).tobytes())
    return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    slow_file, delay = "", 0.0  # one file answered only after a delay (a large model on a slow line)

    def log_message(self, format, *args):  # noqa: A002 - the standard library's name
        pass

    def do_GET(self):
        if self.slow_file and self.path.lstrip("/").split("?")[0] == self.slow_file:
            time.sleep(self.delay)
        super().do_GET()


@contextlib.contextmanager
def serve_folder(folder: Path, slow_file: str = "", delay: float = 0.0):
    """``python -m http.server`` in ``folder`` (on a free port, in a thread); yields the URL.
    ``slow_file`` is sent only ``delay`` seconds after it is asked for."""
    quiet = type("Handler", (_QuietHandler,), {"slow_file": slow_file, "delay": delay})
    handler = functools.partial(quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def wait_until_ready(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("() => document.querySelector('#result').textContent.startsWith('Ready')",
                           timeout=timeout_ms)
    problem = page.locator("#problem").text_content()
    if problem:
        raise RuntimeError(problem)


def answer_for(page, picture: Path, timeout_ms: int = 60_000) -> dict:
    """Give the page one picture through its file chooser; the answer it publishes on #result."""
    before = int(page.locator("#result").get_attribute("data-count") or 0)
    page.set_input_files("#files", str(picture))
    page.wait_for_function(f"() => Number(document.querySelector('#result').dataset.count || 0) > {before}",
                           timeout=timeout_ms)
    result = page.locator("#result")
    return {"label": result.get_attribute("data-label"), "probability": float(result.get_attribute("data-probability")),
            "unknown": result.get_attribute("data-unknown") == "true"}
