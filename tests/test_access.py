"""Access rules: where the server listens, the password check, server-issued session tokens and
owner-only folders; ``./studio app`` refusing an open network address without a password."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from transfer.runtime import access
from transfer.runtime.access import (AccessError, PasswordCheck, check_listen_address, guessing_client, is_issued_token,
                             issue_session_token)
from transfer.runtime.local_queue import queue_dir
from ui import launch

ROOT = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- session tokens


def test_no_token_begins_with_a_dash_that_a_command_line_would_read_as_an_option(transfer_home):
    # a project's id is its token (`transfer project rename ID NAME`); one token in 64 began with "-"
    tokens = [issue_session_token() for _ in range(2000)]
    assert not [token for token in tokens if token.startswith("-")]
    assert all(is_issued_token(token) for token in tokens[:50])


def test_an_issued_token_is_recognised_and_made_up_ones_are_not(transfer_home):
    token = issue_session_token()
    assert is_issued_token(token) and len(token) == access.TOKEN_LENGTH
    assert issue_session_token() != token
    forged = token[: access.TOKEN_LENGTH // 2] + ("A" if token[-1] != "A" else "B") * (access.TOKEN_LENGTH // 2)
    for made_up in ("a" * 24, "a" * access.TOKEN_LENGTH, forged, token[:-1], token + "A", "", None,
                    "../" + token[3:], token.replace(token[5], "+", 1), "é" * access.TOKEN_LENGTH):
        assert not is_issued_token(made_up), made_up


def test_a_token_from_another_studio_is_not_recognised(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "one"))
    token = issue_session_token()
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "two"))
    assert not is_issued_token(token)
    monkeypatch.setenv("TRANSFER_HOME", str(tmp_path / "one"))
    assert is_issued_token(token)


def test_the_secret_is_owner_only_and_created_once_even_by_racing_threads(transfer_home):
    tokens, errors = [], []

    def issue():
        try:
            tokens.append(issue_session_token())
        except Exception as error:  # noqa: BLE001 - the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=issue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    secret = transfer_home / access.SECRET_FILE
    assert mode(secret) == 0o600 and len(secret.read_bytes()) == 32
    assert not [p for p in transfer_home.iterdir() if p.name.endswith(".tmp")]
    assert all(is_issued_token(token) for token in tokens)


def test_a_secret_written_by_another_process_wins_the_race(transfer_home):
    (transfer_home / access.SECRET_FILE).write_bytes(b"x" * 32)
    access._create_secret(transfer_home / access.SECRET_FILE)  # a late process must not replace it
    assert (transfer_home / access.SECRET_FILE).read_bytes() == b"x" * 32


def test_a_damaged_secret_is_reported_as_a_sentence(transfer_home):
    (transfer_home / access.SECRET_FILE).write_bytes(b"short")
    with pytest.raises(AccessError, match="damaged; delete it"):
        issue_session_token()


def test_session_folders_and_the_queue_are_owner_only(transfer_home):
    token = issue_session_token()
    workspace = access.session_dir(token)
    assert workspace == transfer_home / "sessions" / token
    assert mode(workspace) == 0o700 and mode(transfer_home / "sessions") == 0o700
    assert mode(queue_dir()) == 0o700


def test_folders_made_with_wider_permissions_are_tightened(transfer_home):
    (transfer_home / "sessions").mkdir(mode=0o755)
    os.chmod(transfer_home / "sessions", 0o755)
    access.session_dir(issue_session_token())
    assert mode(transfer_home / "sessions") == 0o700


def test_a_made_up_token_names_no_workspace(transfer_home):
    with pytest.raises(AccessError, match="not issued by this studio"):
        access.session_dir("a" * 24)
    assert not (transfer_home / "sessions" / ("a" * 24)).exists()


# --------------------------------------------------------------------------- the password


class FakeClock:
    def __init__(self):
        self.now, self.slept = 1000.0, []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


def test_right_password_opens_wrong_ones_wait_longer_each_time():
    clock = FakeClock()
    check = PasswordCheck("open sesame", first_delay=0.5, max_delay=4, sleep=clock.sleep, clock=clock)
    assert not check.attempt("1.2.3.4", "guess")
    assert not check.attempt("1.2.3.4", "open sesam")
    assert not check.attempt("1.2.3.4", "open sesame!")
    assert not check.attempt("1.2.3.4", "")
    assert not check.attempt("1.2.3.4", "x" * 10_000)
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert check.failures("1.2.3.4") == 5 and check.failures("5.6.7.8") == 0
    assert not check.attempt("5.6.7.8", "nope") and clock.slept[-1] == 0.5  # another client's own count
    assert check.attempt("1.2.3.4", "open sesame") and clock.slept[-1] == 0.5  # no wait on success
    assert check.failures("1.2.3.4") == 0


def test_failures_are_forgotten_after_a_while_and_memory_stays_bounded():
    clock = FakeClock()
    check = PasswordCheck("pw", forget_after=60, max_clients=3, sleep=clock.sleep, clock=clock)
    check.attempt("a", "x")
    clock.now += 61
    assert check.failures("a") == 0
    for client in "bcdef":
        check.attempt(client, "x")
    assert len(check._failures) == 3


def test_the_password_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = access.hmac.compare_digest
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    PasswordCheck("pw", sleep=lambda s: None).attempt("c", "guess")
    assert calls == [(hashlib.sha256(b"guess").digest(), hashlib.sha256(b"pw").digest())]


# --------------------------------------------------------------------------- where the server listens


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.1.1"])
def test_this_computer_needs_no_password(host):
    check_listen_address(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "", None])
def test_a_network_address_needs_a_password(host):
    with pytest.raises(AccessError, match="without a password.*TRANSFER_PASSWORD"):
        check_listen_address(host, None)
    check_listen_address(host, "secret")


def test_the_launcher_listens_locally_by_default():
    args = launch.streamlit_arguments(["--server.port", "8600"], {})
    assert args == ["run", str(ROOT / "app.py"), "--server.address", "127.0.0.1", "--server.port", "8600"]


def test_the_launcher_serves_to_a_network_only_with_a_password():
    with pytest.raises(AccessError):
        launch.streamlit_arguments([], {"TRANSFER_HOST": "0.0.0.0"})
    with pytest.raises(AccessError):
        launch.streamlit_arguments(["--server.address=0.0.0.0"], {})
    with pytest.raises(AccessError):
        launch.streamlit_arguments(["--server.address", "0.0.0.0"], {"TRANSFER_PASSWORD": ""})
    args = launch.streamlit_arguments([], {"TRANSFER_HOST": "0.0.0.0", "TRANSFER_PASSWORD": "pw"})
    assert args[2:] == ["--server.address", "0.0.0.0"]
    assert launch.streamlit_arguments(["--server.address", "10.0.0.2"], {"TRANSFER_PASSWORD": "pw"})[2:] == [
        "--server.address", "10.0.0.2"]


def test_studio_app_refuses_an_open_network_address_without_a_password(tmp_path):
    """The real ``./studio app`` script, with its install step already done, exits with the sentence."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / f".installed-app-{digest}").touch()
    env = {key: value for key, value in os.environ.items() if key != "TRANSFER_PASSWORD"}
    env.update(TRANSFER_VENV=str(venv), TRANSFER_HOST="0.0.0.0", PYTHONPATH=str(ROOT))
    result = subprocess.run([str(ROOT / "studio"), "app"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Refusing to serve the studio on 0.0.0.0 without a password" in result.stderr
    assert "TRANSFER_PASSWORD" in result.stderr


def test_the_guessing_delay_is_keyed_by_the_trusted_proxys_header_when_one_is_configured():
    forwarded = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}  # the visitor wrote the first one
    assert guessing_client("10.0.0.1", forwarded, {}) == "10.0.0.1"  # no proxy configured: the connection
    proxied = {"TRANSFER_TRUSTED_PROXY_HEADER": "X-Forwarded-For"}
    assert guessing_client("10.0.0.1", forwarded, proxied) == "198.51.100.7"  # the address the proxy added
    assert guessing_client("10.0.0.1", {"X-Forwarded-For": "198.51.100.8"}, proxied) == "198.51.100.8"
    assert guessing_client("10.0.0.1", {}, proxied) == "10.0.0.1"  # a request that bypassed the proxy
    assert guessing_client(None, None, {}) == "this computer"

    # Two visitors behind one proxy no longer share a wait.
    check = PasswordCheck("right", sleep=lambda seconds: None)
    first = guessing_client("10.0.0.1", {"X-Forwarded-For": "198.51.100.7"}, proxied)
    second = guessing_client("10.0.0.1", {"X-Forwarded-For": "198.51.100.8"}, proxied)
    for _ in range(3):
        check.attempt(first, "wrong")
    assert check.failures(first) == 3 and check.failures(second) == 0
