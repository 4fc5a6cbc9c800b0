"""The password gate in front of every studio page, when ``TRANSFER_PASSWORD`` is set.

A locked page shows one password field and nothing else. Whether a session is unlocked is
kept on the server: in the Streamlit session, and (so that a refresh does not ask again) in a
server-side set of the session tokens that were unlocked; tokens are server-issued and signed,
so such a link cannot be made up. A restart of the server locks every session again.
"""

from __future__ import annotations

import threading

import streamlit as st

from transfer.runtime import access
from ui import session

_UNLOCKED = "studio_unlocked"
_FIELD = "studio_password"
_WRONG = "studio_password_wrong"
_MAX_REMEMBERED = 100_000


class _UnlockedTokens:
    """The session tokens unlocked since this server started (bounded, oldest forgotten first)."""

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
    """True when this session may use the studio: no password is set, or it was typed here."""
    if access.configured_password() is None or st.session_state.get(_UNLOCKED):
        return True
    if _link_was_unlocked():
        st.session_state[_UNLOCKED] = True
        return True
    return False


def require_unlocked() -> None:
    """Stop at the password field unless this session is unlocked."""
    if not unlocked():
        ask_for_password()


def remember(token: str) -> None:
    """Let a refreshed tab with this session's link in when the session is unlocked."""
    if access.configured_password() is not None and unlocked():
        _unlocked_tokens().add(token)


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


def _link_was_unlocked() -> bool:
    token = st.query_params.get(session.SESSION_PARAM)
    return bool(token) and token in _unlocked_tokens() and access.is_issued_token(token)


def _try_password() -> None:
    # A callback, so each typed password is checked exactly once, not again on every rerun.
    guess, password = st.session_state.get(_FIELD) or "", access.configured_password()
    st.session_state[_FIELD] = ""
    if not guess or password is None:
        return
    right = _password_check(password).attempt(_client(), guess)
    st.session_state[_UNLOCKED] = right
    st.session_state[_WRONG] = not right


def _client() -> str:
    """Who is guessing: the connection's address, so that new tabs do not reset the wait."""
    return st.context.ip_address or "this computer"
