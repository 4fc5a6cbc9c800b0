"""Uploads are kept only from sessions the pages let in, and within a memory budget.

The budget on its own, then a real studio server: a locked password page's session sends large
bodies straight to Streamlit's upload route and the server's memory stays flat, while an open
studio's session still uploads.
"""

from __future__ import annotations

import pytest

from browser.browsertools import free_port, put_upload, start_studio, stop_studio, streamlit_session
from ui.upload_guard import DEMO, STUDIO, UploadBudget, UploadRefused

MB = 2**20


def budget(server_mb=100, studio_mb=60, demo_mb=10) -> UploadBudget:
    return UploadBudget(server_mb * MB, {STUDIO: studio_mb * MB, DEMO: demo_mb * MB})


def test_a_session_not_let_in_cannot_reserve_or_keep_a_byte():
    guard = budget()
    with pytest.raises(UploadRefused, match="not been admitted"):
        guard.reserve("locked", 1)
    with pytest.raises(UploadRefused, match="not been admitted"):
        guard.keep("locked", "file", 1)
    assert guard.held() == 0


def test_each_session_and_the_whole_server_hold_at_most_their_limits():
    guard = budget()
    guard.admit("a", STUDIO)
    guard.admit("b", STUDIO)
    guard.admit("visitor", DEMO)
    guard.keep("a", "zip", 50 * MB)
    with pytest.raises(UploadRefused, match="studio session holds at most 60 MB"):
        guard.reserve("a", 11 * MB)
    guard.keep("a", "zip", 55 * MB)  # the same file sent again replaces, not adds
    guard.keep("b", "zip", 40 * MB)
    with pytest.raises(UploadRefused, match="server holds at most 100 MB"):
        guard.reserve("b", 6 * MB)
    with pytest.raises(UploadRefused, match="demo session holds at most 10 MB"):
        guard.reserve("visitor", 11 * MB)
    guard.reserve("visitor", 5 * MB)
    assert guard.held() == 100 * MB
    guard.release("visitor", 5 * MB)
    guard.drop("a", "zip")
    assert guard.held() == 40 * MB
    guard.forget("b")
    assert guard.held() == 0 and not guard.is_admitted("b")


# --------------------------------------------------------------------------- a real server


def _peak_memory_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.fixture
def server(tmp_path):
    started = []

    def start(env: dict):
        port = free_port()
        process = start_studio(tmp_path, port, env)
        started.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        stop_studio(process)


LOCKED_UPLOADS, LOCKED_UPLOAD_MB, MEMORY_BOUND_MB = 3, 100, 40


@pytest.mark.slow
def test_a_locked_page_cannot_make_the_real_server_keep_upload_bytes(server):
    process, url = server({"TRANSFER_PASSWORD": "correct horse"})
    with streamlit_session(url) as (session_id, xsrf, _):
        before = _peak_memory_mb(process.pid)
        answers = [put_upload(url, session_id, xsrf, LOCKED_UPLOAD_MB * MB) for _ in range(LOCKED_UPLOADS)]
        grown = _peak_memory_mb(process.pid) - before
    assert 204 not in answers and 200 not in answers, answers
    # Without the guard each body is kept: the peak grows by 300 MB and stays.
    assert grown < MEMORY_BOUND_MB, f"the server's peak memory grew by {grown:.0f} MB"


@pytest.mark.slow
def test_an_open_studio_page_still_uploads(server):
    _process, url = server({})
    with streamlit_session(url) as (session_id, xsrf, _):
        assert put_upload(url, session_id, xsrf, 2 * MB) == 204
