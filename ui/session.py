"""Each browser session works in one project: a private folder named by an unguessable token.

The token travels in the page URL (``?s=<token>``), so a refreshed or reopened tab finds its
data set and runs again, while another session, without the token, can never see them. Tokens
are issued and signed by the server (``transfer.runtime.access``): one it did not issue is ignored,
so nobody can hand out a link to a workspace they plan to read later. A visit without a link
continues the project this browser opened last (``ui.project_memory``); Home opens the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from transfer.runtime import access
from transfer.core.files import atomic_write_json
from ui import gate, pages_mode, project_memory

SESSION_PARAM = "s"
_TOKEN = "session_token"
_REMEMBERED = "session_token_remembered"
#: Session state that belongs to the browser, not to the open project: kept when switching.
_BROWSER_STATE_PREFIXES = ("studio_", "project_browser_")


def session_token() -> str:
    """This browser session's project token: from the link, else the project this browser
    opened last, else a new one; kept in the URL."""
    token = st.session_state.get(_TOKEN)
    if token is None:
        pages_mode.run_through_app_py()  # a link into a page on a server not started by ./studio app
        gate.require_unlocked()  # no workspace for anyone who has not typed the password
        from_url = st.query_params.get(SESSION_PARAM)
        token = from_url if access.is_issued_token(from_url) else None
        token = token or project_memory.project_to_open() or access.issue_session_token()
        st.session_state[_TOKEN] = token
    if st.query_params.get(SESSION_PARAM) != token:
        st.query_params[SESSION_PARAM] = token
    if st.session_state.get(_REMEMBERED) != token:
        st.session_state[_REMEMBERED] = token
        project_memory.remember(token)
    return token


def switch_project(token: str) -> None:
    """Open the project ``token`` in this browser session (from a button's callback): what the
    pages kept for the previous project is dropped, the browser's own state stays."""
    for name in list(st.session_state):
        if not str(name).startswith(_BROWSER_STATE_PREFIXES):
            del st.session_state[name]
    for name in [name for name in st.query_params if name != SESSION_PARAM]:
        del st.query_params[name]
    st.session_state[_TOKEN] = token
    st.query_params[SESSION_PARAM] = token


def workspace() -> Path:
    return access.session_dir(session_token())


def runs_dir() -> Path:
    path = workspace() / "runs"
    path.mkdir(exist_ok=True)
    return path


def uploads_dir() -> Path:
    path = workspace() / "uploads"
    path.mkdir(exist_ok=True)
    return path


def job_manager():
    from transfer.runtime.jobs import JobManager
    from transfer.core.quota import DiskQuota

    return JobManager(runs_dir(), quota=DiskQuota.for_session(workspace()))


# --------------------------------------------------------------------------- chosen data set

_DATASET_FILE = "dataset.json"


def chosen_dataset() -> dict | None:
    """The data set this session picked: {"source", "name", "val_fraction", "seed"}, or None."""
    path = workspace() / _DATASET_FILE
    if not path.is_file():
        return None
    try:
        choice = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not Path(choice.get("source", "")).exists():
        return None
    choice.setdefault("val_fraction", 0.2)
    choice.setdefault("seed", 0)
    return choice


def choose_dataset(source: Path | str, name: str, *, val_fraction: float = 0.2, seed: int = 0) -> None:
    """Remember the data set (and, when it has no val/ folder, how to split it) for every page."""
    atomic_write_json(workspace() / _DATASET_FILE,
                      {"source": str(source), "name": name, "val_fraction": val_fraction, "seed": seed})


_DRAFT_FILE = "draft_config.json"


def draft_config() -> dict:
    """The training settings being edited on the Configure page (kept across refreshes)."""
    path = workspace() / _DRAFT_FILE
    try:
        draft = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        draft = {}
    return draft if isinstance(draft, dict) else {}


def save_draft_config(settings: dict) -> None:
    atomic_write_json(workspace() / _DRAFT_FILE, settings)


def forget_dataset() -> None:
    (workspace() / _DATASET_FILE).unlink(missing_ok=True)


_COMPARISON_FILE = "comparison.json"


def remember_comparison(run_ids: list[str]) -> None:
    """The runs started together by "Compare the three methods", for the overlay's default."""
    atomic_write_json(workspace() / _COMPARISON_FILE, {"runs": list(run_ids)})


def last_comparison() -> list[str]:
    path = workspace() / _COMPARISON_FILE
    try:
        return list(json.loads(path.read_text()).get("runs", []))
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
