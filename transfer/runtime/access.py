"""Who may reach the studio: where the server listens, the password, and server-issued sessions.

- The server listens on this computer only unless a password is set (``check_listen_address``).
- With ``TRANSFER_PASSWORD`` set, the pages stay locked until it is typed (``PasswordCheck``):
  constant-time comparison, and each failure from one client doubles the wait before the next
  answer, so guessing is slow.
- A browser session's workspace is named by a token the server issued and signed with a secret
  kept under ``TRANSFER_HOME`` (``issue_session_token`` / ``is_issued_token``): a token made up
  by someone else names no workspace, so no one can plant a link whose data they read later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from transfer.core import paths
from transfer.core.errors import TransferError

PASSWORD_ENV = "TRANSFER_PASSWORD"
# Behind a reverse proxy every connection comes from the proxy: the header it writes the
# visitor's address into (X-Forwarded-For, X-Real-IP, ...) keys the password's guessing delay.
TRUSTED_PROXY_HEADER_ENV = "TRANSFER_TRUSTED_PROXY_HEADER"
HOST_ENV = "TRANSFER_HOST"
DEFAULT_HOST = "127.0.0.1"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class AccessError(TransferError):
    """The server was asked to do something the access rules forbid."""


# --------------------------------------------------------------------------- where to listen


def configured_password(env: dict | None = None) -> str | None:
    """The studio's password, or None when the studio is open (then it must stay on this computer)."""
    value = (os.environ if env is None else env).get(PASSWORD_ENV, "")
    return value or None


def is_local_host(host: str | None) -> bool:
    """True for addresses only this computer can reach. An empty address means every interface."""
    return bool(host) and (host in LOCAL_HOSTS or host.startswith("127."))


def check_listen_address(host: str | None, password: str | None) -> None:
    """Refuse to serve beyond this computer without a password."""
    if not is_local_host(host) and not password:
        where = host or "every network interface"
        raise AccessError(
            f"Refusing to serve the studio on {where} without a password: anyone on the network could use it. "
            f"Set {PASSWORD_ENV} to serve it to others, or leave {HOST_ENV} unset to keep it on this computer."
        )


# --------------------------------------------------------------------------- the password


class PasswordCheck:
    """Checks typed passwords; failures from one client wait longer and longer before the answer.

    The wait doubles with every failure in a row (``first_delay`` up to ``max_delay`` seconds) and
    attempts of one client are answered one at a time, so opening many tabs does not multiply the
    guessing rate. Failures are forgotten after ``forget_after`` seconds without one, or on success.
    An IPv6 client is its /64 network (one machine gets a whole /64 to pick addresses from). Past
    ``server_budget`` failures from everyone within ``forget_after`` seconds, every wrong guess
    waits ``max_delay`` and they are answered one at a time server-wide, so rotating addresses or
    flooding the list of clients does not reset the wait.
    """

    def __init__(self, password: str, *, first_delay: float = 0.5, max_delay: float = 8.0,
                 forget_after: float = 900.0, max_clients: int = 10_000, server_budget: int = 100,
                 sleep=time.sleep, clock=time.monotonic):
        self._digest = hashlib.sha256(password.encode()).digest()
        self.first_delay, self.max_delay, self.forget_after = first_delay, max_delay, forget_after
        self.max_clients, self.server_budget = max_clients, server_budget
        self._recent_failures: deque[float] = deque(maxlen=server_budget + 1)  # every client's, newest last
        self._server_turn = threading.Lock()
        self._sleep, self._clock = sleep, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (count, last)
        self._client_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def attempt(self, client: str, guess: str) -> bool:
        """True when ``guess`` is the password. A wrong guess returns only after the client's wait."""
        client = guessing_key(client)
        with self._client_lock(client):
            # Comparing digests keeps the time independent of both contents and lengths.
            right = hmac.compare_digest(hashlib.sha256(guess.encode()).digest(), self._digest)
            if right:
                self._forget(client)
                return True
            wait = self._record_failure(client)
            if self._over_server_budget():
                with self._server_turn:
                    self._sleep(self.max_delay)
            else:
                self._sleep(wait)
            return False

    def _over_server_budget(self) -> bool:
        with self._lock:
            now = self._clock()
            self._recent_failures.append(now)
            recent = [t for t in self._recent_failures if now - t < self.forget_after]
            return len(recent) > self.server_budget

    def failures(self, client: str) -> int:
        client = guessing_key(client)
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
            return count if self._clock() - last < self.forget_after else 0

    def _record_failure(self, client: str) -> float:
        count = self.failures(client) + 1
        with self._lock:
            self._failures[client] = (count, self._clock())
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:  # bounded memory under a flood of clients
                self._failures.popitem(last=False)
        return min(self.max_delay, self.first_delay * 2 ** (count - 1))

    def _forget(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _client_lock(self, client: str) -> threading.Lock:
        with self._lock:
            if len(self._client_locks) > self.max_clients:
                self._client_locks.clear()  # only in-flight attempts lose their turn order
            return self._client_locks.setdefault(client, threading.Lock())


def guessing_key(client: str) -> str:
    """The key a client's failures are counted under: an IPv6 address's /64 network, else the client."""
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


def guessing_client(connection_address: str | None, headers, env: dict | None = None) -> str:
    """Who is guessing the password, for its delay: the visitor's address as the configured
    trusted proxy reports it (the last address in the header: the one the proxy itself added,
    since a visitor can write anything before it), else the connection's address. Only set the
    header's name when every request passes through that proxy, or visitors can choose their key."""
    name = (os.environ if env is None else env).get(TRUSTED_PROXY_HEADER_ENV, "").strip()
    if name and headers is not None:
        value = headers.get(name) or ""
        reported = value.split(",")[-1].strip()
        if reported:
            return reported
    return connection_address or "this computer"


# --------------------------------------------------------------------------- session tokens

SECRET_FILE = "session-secret"
_SECRET_BYTES = 32
_NONCE_BYTES = 18  # 24 URL-safe characters, no padding
_MAC_BYTES = 18
TOKEN_LENGTH = 4 * (_NONCE_BYTES + _MAC_BYTES) // 3


def issue_session_token() -> str:
    """A new, unguessable session token that this server will recognise as its own. It never
    begins with "-": a project's id is its token, and `transfer project rename ID NAME` would
    read such an id as an option."""
    while True:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        token = _b64(nonce + _mac(nonce))
        if not token.startswith("-"):
            return token


def is_issued_token(token: str | None) -> bool:
    """True only for tokens made by ``issue_session_token`` with this studio's secret."""
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH:
        return False
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False
    if _b64(raw) != token:  # only the one canonical spelling of each token
        return False
    nonce, mac = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    return hmac.compare_digest(mac, _mac(nonce))


def sessions_root() -> Path:
    return paths.private_dir(paths.home() / "sessions")


def session_dir(token: str) -> Path:
    """The private workspace folder of an issued token (created 0700 on first use)."""
    if not is_issued_token(token):
        raise AccessError("This session link was not issued by this studio; open the studio again to get a new one.")
    return paths.private_dir(sessions_root() / token)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _mac(nonce: bytes) -> bytes:
    return hmac.new(_secret(), b"session:" + nonce, hashlib.sha256).digest()[:_MAC_BYTES]


_SECRETS: dict[Path, bytes] = {}
_SECRETS_LOCK = threading.Lock()


def _secret() -> bytes:
    """This studio's signing secret, read once per process (per ``TRANSFER_HOME``)."""
    path = paths.home() / SECRET_FILE
    with _SECRETS_LOCK:
        if path not in _SECRETS or not path.exists():
            _SECRETS[path] = _read_or_create_secret(path)
        return _SECRETS[path]


def _read_or_create_secret(path: Path) -> bytes:
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes()
    if len(secret) != _SECRET_BYTES:
        raise AccessError(f"The studio's session secret {path} is damaged; delete it (every session link "
                          "then has to be opened anew) and start the studio again.")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return secret


def _create_secret(path: Path) -> None:
    # Not atomic_write_bytes: that replaces an existing file, and two servers starting at once
    # must agree on one secret. A complete temp file is linked into place, which fails if another
    # process won the race; then its secret is the one read.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(_SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
