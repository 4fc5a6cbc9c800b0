"""Small waits that make browser tests follow Streamlit's rhythm, and starting a studio server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

from waiting import wait_for

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
    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the studio server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(serving, "the studio server to start", timeout=timeout, interval=0.3)


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


# --------------------------------------------------------------------------- a client without a browser

MB = 2**20


@contextlib.contextmanager
def streamlit_session(url: str, query: str = ""):
    """A Streamlit session of the page at ``?query`` as a browser opens it (no password typed),
    alive while in the block: its id, the XSRF cookie and the open websocket."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from websockets.sync.client import connect

    with urllib.request.urlopen(url + "/_stcore/health") as response:  # sets the XSRF cookie
        cookies = response.headers.get_all("Set-Cookie") or []
    xsrf = next(c.split(";")[0].split("=", 1)[1] for c in cookies if c.startswith("_streamlit_xsrf="))
    socket_url = url.replace("http://", "ws://") + "/_stcore/stream"
    with connect(socket_url, subprotocols=["streamlit", xsrf], max_size=None,
                 additional_headers={"Cookie": f"_streamlit_xsrf={xsrf}"}) as connection:
        rerun = BackMsg()
        rerun.rerun_script.query_string = query
        rerun.rerun_script.page_script_hash = ""
        connection.send(rerun.SerializeToString())
        yield wait_for_run(connection), xsrf, connection


def wait_for_run(connection, elements: list | None = None) -> str:
    """Read the server's messages until the page's run has finished; its session id. The new
    elements it drew are appended to ``elements``."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    session = {"id": None}

    def run_finished() -> bool:  # reads one message each time
        message = ForwardMsg()
        message.ParseFromString(connection.recv(timeout=60))
        if message.WhichOneof("type") == "delta" and elements is not None:
            elements.append(message.delta.new_element)
        if message.WhichOneof("type") == "new_session":
            session["id"] = message.new_session.initialize.session_id
        return message.WhichOneof("type") == "script_finished" and bool(session["id"] or elements is not None)

    wait_for(run_finished, "the page to finish its run", timeout=60, interval=0)
    return session["id"]


def put_upload(url: str, session_id: str, xsrf: str, size: int, data: bytes | None = None,
               file_id: str | None = None, name: str = "upload.zip") -> int | None:
    """PUT a file (``data``, else ``size`` zero bytes) to Streamlit's upload route, as the page's
    uploader does; its status, or None when the server closed the connection before answering."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    request = (f"PUT /_stcore/upload_file/{session_id}/{file_id or uuid.uuid4()} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(head) + (len(data) if data is not None else size) + len(tail)}\r\nX-Xsrftoken: {xsrf}\r\n"
               f"Cookie: _streamlit_xsrf={xsrf}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        try:
            connection.sendall(request + head)
            if data is not None:
                connection.sendall(data)
            else:
                for _ in range(size // MB):
                    connection.sendall(bytes(MB))
            connection.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body: the server stopped reading
        try:
            answer = connection.recv(200)
        except (ConnectionResetError, TimeoutError):
            return None
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else None
