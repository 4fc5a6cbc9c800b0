"""Which projects this browser may see, and which one it opens when no link says.

Without a password (the studio listens on this computer only) every project on the studio is
the person's own. With a password (a shared server) a browser sees the projects it created or
opened: the server keeps that list under a random key, and the browser keeps the key in a
cookie of this site (``transfer_projects``), never in a URL. Streamlit reads cookies once per
connection, so the key handed over now is seen from the next visit on; until then the session
remembers it.
"""

from __future__ import annotations

import streamlit as st
import streamlit.components.v1 as components

from transfer.runtime import access, projects

COOKIE = "transfer_projects"
COOKIE_DAYS = 400  # the longest a browser keeps a cookie
_KEY = "project_browser_key"
_HANDED = "project_browser_key_handed"


def everyone_sees_everything() -> bool:
    """True on a studio without a password: one person's machine, every project is theirs."""
    return access.configured_password() is None


def _sent_cookie() -> str | None:
    """The project key this browser sent when it connected."""
    return st.context.cookies.get(COOKIE)


def _browser_key(create: bool) -> str | None:
    key = st.session_state.get(_KEY)
    if key is None:
        sent = _sent_cookie()
        key = sent if sent and projects.browser_projects(sent) else None
        if key is None and create:
            key = projects.new_browser_key()
        if key is not None:
            st.session_state[_KEY] = key
    return key


def visible_ids() -> list[str] | None:
    """The project ids this browser may list; None for all of them."""
    if everyone_sees_everything():
        return None
    return projects.browser_projects(_browser_key(create=False))


def remember(project_id: str) -> None:
    """Note that this browser opened ``project_id`` (and that it was opened now)."""
    projects.mark_opened(project_id)
    if everyone_sees_everything():
        return
    key = _browser_key(create=True)
    projects.remember_in_browser(key, project_id)
    _hand_key_to_browser(key)


def _hand_key_to_browser(key: str) -> None:
    if _sent_cookie() == key or st.session_state.get(_HANDED) == key:
        return
    st.session_state[_HANDED] = key
    # The component's frame has the page's origin, so it can set the page's cookie; the key is
    # URL-safe base64, nothing to escape.
    components.html(
        "<script>window.parent.document.cookie = "
        f"'{COOKIE}={key}; path=/; max-age={COOKIE_DAYS * 86400}; SameSite=Strict'"
        " + (window.parent.location.protocol === 'https:' ? '; Secure' : '');</script>", height=0)


def project_to_open() -> str | None:
    """The project a visit without a link continues: the one this browser (or, without a
    password, anyone on this computer) opened last."""
    last = projects.last_opened_project(visible_ids())
    return last.id if last else None
