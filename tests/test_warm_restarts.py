"""The fork server is not restarted in a loop: never for a socket path too long to listen on,
after a start that never got warm only once a doubling wait is over, and its exit is reaped."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from waiting import wait_for

from transfer.runtime import warm


@pytest.fixture
def starts(monkeypatch):
    """The queue as a studio sees it with no fork server alive; records each start."""
    started = []
    monkeypatch.setattr(warm, "studio_running", lambda queue: True)
    monkeypatch.setattr(warm, "server_alive", lambda queue: False)
    monkeypatch.setattr(warm, "start_server", lambda queue: started.append(queue))
    return started


def test_a_queue_whose_socket_path_is_too_long_never_starts_a_fork_server(tmp_path, starts):
    queue = tmp_path / ("q" * (warm.MAX_SOCKET_PATH - len(str(tmp_path)) + 1))
    queue.mkdir()
    assert len(str(queue / warm.SOCKET_NAME)) > warm.MAX_SOCKET_PATH
    assert warm.keep_alive(queue) is False and starts == []


def test_a_fork_server_that_dies_before_it_is_warm_is_started_again_after_a_doubling_wait(tmp_path, starts):
    now = 1_000_000.0
    assert warm.keep_alive(tmp_path, now=now)  # the first start is at once
    assert not warm.keep_alive(tmp_path, now=now + 1)  # it died while warming up: every dispatch waits
    assert not warm.keep_alive(tmp_path, now=now + warm.FIRST_RETRY_SECONDS - 1)
    assert warm.keep_alive(tmp_path, now=now + warm.FIRST_RETRY_SECONDS)
    second = now + warm.FIRST_RETRY_SECONDS
    assert not warm.keep_alive(tmp_path, now=second + 2 * warm.FIRST_RETRY_SECONDS - 1)
    assert warm.keep_alive(tmp_path, now=second + 2 * warm.FIRST_RETRY_SECONDS)
    assert len(starts) == 3
    warm.record_warm(tmp_path)  # one got warm (and died later): the next start is at once again
    assert warm.keep_alive(tmp_path, now=time.time())
    assert warm.retry_wait(30) == warm.MAX_RETRY_SECONDS


def test_a_dead_fork_server_started_by_this_process_is_reaped(tmp_path, monkeypatch):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    monkeypatch.setattr(warm, "_started", [process])

    def exited_not_reaped() -> bool:
        with open(f"/proc/{process.pid}/stat") as stat:
            return stat.read().split()[2] == "Z"

    wait_for(exited_not_reaped, "the child to exit (a zombie, not yet reaped)", timeout=30)
    monkeypatch.setattr(warm, "studio_running", lambda queue: False)
    warm.keep_alive(tmp_path)
    assert process.returncode == 0 and warm._started == []


def test_a_run_whose_environment_changes_import_time_settings_is_not_forked(monkeypatch):
    from transfer.runtime import warm_server

    monkeypatch.setattr(warm_server, "_import_env", {"HF_HUB_OFFLINE": "1"})
    request = {"run_dir": "/somewhere/run-1", "code": warm.CODE_ROOT, "executable": sys.executable, "slots": 1,
               "env": {"HF_HUB_OFFLINE": "1", "TRANSFER_HOME": "/elsewhere"}}
    assert warm_server.refuse(request, [5, 6]) == ""
    request["env"]["HF_HUB_OFFLINE"] = "0"  # the fork would keep the server's offline setting
    assert "HF_HUB_OFFLINE" in warm_server.refuse(request, [5, 6])
    request["env"] = {"TORCH_HOME": "/my/cache"}
    assert "TORCH_HOME" in warm_server.refuse(request, [5, 6])
