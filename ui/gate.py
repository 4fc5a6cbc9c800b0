"""The password gate in front of every studio page, when ``TRANSFER_PASSWORD`` is set.

A locked page shows one password field and nothing else. Whether a session is unlocked is
kept on the server: in the Streamlit session, and (so that a refresh does not ask again) in a
server-side set of unlock keys. The key belongs to the browser that typed the password: it is
handed to it as a cookie (``transfer_unlocked``), never put in the page's link, so a ``?s=``
session link passed on or overheard opens nothing without the password. A restart of the
server locks every browser again.
"""

from __future__ import annotations

import secrets
import threading

import streamlit as st
import streamlit.components.v1 as components

from transfer.runtime import access
from ui import upload_guard

_UNLOCKED = "studio_unlocked"
_FIELD = "studio_password"
_WRONG = "studio_password_wrong"
_KEY = "studio_unlock_key"  # this session's unlock key, handed to its browser as a cookie
COOKIE = "transfer_unlocked"
COOKIE_DAYS = 30
_MAX_REMEMBERED = 100_000


class _UnlockedTokens:
    """The browsers' unlock keys issued since this server started (bounded, oldest forgotten first)."""

    def __init__(self):
        self._tokens: dict[str, None] = {}
        self._lock = threading.Lock()

    def add(self, token: str) -> None:
        with self._lock:
            self._tokens[token] = None
            while len(self._tokens) > _MAX_REMEMBERED:
                del self._tokens[next(iter(self._tokens))]

    def __contains__(self, token) -> bool:
        with self._lock:
            return token in self._tokens


@st.cache_resource
def _unlocked_tokens() -> _UnlockedTokens:
    return _UnlockedTokens()


@st.cache_resource
def _password_check(password: str) -> access.PasswordCheck:
    return access.PasswordCheck(password)


def unlocked() -> bool:
    """True when this session may use the studio: no password is set, or this browser typed it.
    Only then may the session upload files (a locked page makes the server keep no upload)."""
    if _is_unlocked():
        upload_guard.admit(upload_guard.STUDIO)
        return True
    return False


def _is_unlocked() -> bool:
    if access.configured_password() is None:
        return True
    if st.session_state.get(_UNLOCKED):
        _hand_key_to_browser()
        return True
    if _browser_was_unlocked():
        st.session_state[_UNLOCKED] = True
        return True
    return False


def require_unlocked() -> None:
    """Stop at the password field unless this session is unlocked."""
    if not unlocked():
        ask_for_password()


def ask_for_password() -> None:
    """Show the password field and nothing else, then stop this run of the page."""
    st.text_input("Password", type="password", key=_FIELD, max_chars=256, autocomplete="current-password",
                  on_change=_try_password)
    if st.session_state.get(_WRONG):
        st.error("That is not the password. Try again.")
    st.stop()


def refuse_open_network() -> None:
    """Stop with a sentence when the server listens beyond this computer without a password.

    ``./studio app`` refuses to start that way; this covers a server started by other means. The
    project's config.toml always names an address; only AppTest runs without one.
    """
    try:
        access.check_listen_address(st.get_option("server.address") or access.DEFAULT_HOST,
                                    access.configured_password())
    except access.AccessError as error:
        st.error(str(error))
        st.stop()


def browser_cookie() -> str | None:
    """The unlock key this browser sent when it connected (Streamlit reads cookies once per
    connection, so a key handed over now is seen from the next refresh or tab on)."""
    return st.context.cookies.get(COOKIE)


def _browser_was_unlocked() -> bool:
    key = browser_cookie()
    return bool(key) and key in _unlocked_tokens()


def _hand_key_to_browser() -> None:
    """Give the browser that typed the password its unlock key, in a cookie of this site only."""
    key = st.session_state.get(_KEY)
    if not key or browser_cookie() == key:
        return
    # The component's frame has the page's origin, so it can set the page's cookie; the key is
    # URL-safe base64, nothing to escape.
    components.html(
        "<script>window.parent.document.cookie = "
        f"'{COOKIE}={key}; path=/; max-age={COOKIE_DAYS * 86400}; SameSite=Strict'"
        " + (window.parent.location.protocol === 'https:' ? '; Secure' : '');</script>", height=0)


def _try_password() -> None:
    # A callback, so each typed password is checked exactly once, not again on every rerun.
    guess, password = st.session_state.get(_FIELD) or "", access.configured_password()
    st.session_state[_FIELD] = ""
    if not guess or password is None:
        return
    right = _password_check(password).attempt(_client(), guess)
    st.session_state[_UNLOCKED] = right
    st.session_state[_WRONG] = not right
    if right:
        key = secrets.token_urlsafe(32)
        _unlocked_tokens().add(key)
        st.session_state[_KEY] = key


def _client() -> str:
    """Who is guessing: the visitor's address (as a configured trusted proxy reports it), so that
    new tabs do not reset the wait."""
    return access.guessing_client(st.context.ip_address, st.context.headers)
