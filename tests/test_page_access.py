"""AppTest of the studio's doors: the password gate, server-issued session tokens, and an
unexpected error shown as a sentence (details in the server log, none in the browser)."""

from __future__ import annotations

import logging
import secrets

import pytest
from apptools import open_app

from transfer.runtime.access import is_issued_token, issue_session_token
from ui import failures, gate, pages_mode, sidebar

ELEMENT_KINDS = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success",
                 "button", "table", "dataframe", "metric", "selectbox", "radio", "checkbox", "tabs", "expander")


def shown(app, kinds=ELEMENT_KINDS) -> dict[str, list]:
    """Every element of these kinds on the page, main area and sidebar, that has any."""
    found = {kind: list(getattr(app, kind)) for kind in kinds}
    return {kind: items for kind, items in found.items() if items}


@pytest.fixture(autouse=True)
def served_as_launched(monkeypatch):
    """Run every page through app.py, as the server started by ``./studio app`` does.

    AppTest decides Streamlit's old "pages directory" mode afresh before every run, so a page it
    switches to runs without app.py; the studio's launcher (ui/launch.py) settles that once, before
    the first session, for app.py's own navigation. Do what the launcher does.
    """
    from streamlit.testing.v1 import app_test

    class LaunchedPagesManager(app_test.PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pages_mode.declare_own_navigation()

    monkeypatch.setattr(app_test, "PagesManager", LaunchedPagesManager)


@pytest.fixture
def password(monkeypatch) -> str:
    value = "pw-" + secrets.token_hex(8)  # a fresh one per test: no failure count carried over
    monkeypatch.setenv("TRANSFER_PASSWORD", value)
    return value


def assert_locked(app) -> None:
    assert not app.exception
    assert len(app.text_input) == 1 and app.text_input[0].label == "Password"
    assert app.text_input[0].proto.type == app.text_input[0].proto.PASSWORD
    assert not app.sidebar.caption and not app.title
    assert "s" not in app.query_params  # no session is issued before the password


def test_with_a_password_set_the_page_shows_only_the_password_field(password):
    app = open_app()
    assert_locked(app)
    assert shown(app) == {}


@pytest.mark.parametrize("page", ["pages/train.py", "pages/data.py", "pages/predict.py"])
def test_a_link_into_a_page_is_locked_too(password, page):
    app = open_app(page)
    assert_locked(app)
    assert shown(app) == {}


@pytest.mark.parametrize("page", ["pages/train.py", "pages/data.py", "pages/predict.py"])
def test_a_page_run_without_app_py_still_gives_out_no_session_before_the_password(password, page, monkeypatch):
    # As Streamlit's pages-directory mode would run it (a server not started by ./studio app).
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import app_test

    monkeypatch.setattr(app_test, "PagesManager", PagesManager)
    app = open_app(page)
    assert not app.exception
    assert [t.label for t in app.text_input] == ["Password"]
    assert "s" not in app.query_params and "session_token" not in app.session_state
    assert not shown(app, ("button", "metric", "dataframe", "table", "selectbox", "radio"))


def test_a_wrong_password_keeps_the_studio_locked(password):
    app = open_app()
    app.text_input[0].input("not " + password).run()
    assert_locked(app)
    assert [e.value for e in app.error] == ["That is not the password. Try again."]
    assert app.text_input[0].value == ""  # the typed guess is not kept in the field
    app.text_input[0].input(password[:-1]).run()
    assert_locked(app)


def test_the_right_password_opens_the_studio_and_the_session_stays_open(password, monkeypatch):
    app = open_app()
    app.text_input[0].input(password).run()
    assert not app.exception
    assert app.title[0].value == "Transfer Studio" and not [t for t in app.text_input if t.label == "Password"]
    token = app.query_params["s"]
    assert is_issued_token(token)
    app.switch_page("pages/data.py").run()
    assert not app.exception and app.title[0].value != "Transfer Studio" and not app.get("text_input") == []
    assert not [t for t in app.text_input if t.label == "Password"]

    # The browser that typed the password is handed an unlock key as a cookie (a page element) ...
    key = app.session_state["studio_unlock_key"]
    handed = [element for element in app.main if "document.cookie" in str(getattr(element, "proto", ""))]
    assert handed and f"{gate.COOKIE}={key}" in str(handed[0].proto)
    # ... and a refreshed tab of that browser (a new Streamlit session sending the cookie) stays unlocked ...
    monkeypatch.setattr(gate, "browser_cookie", lambda: key)
    refreshed = open_app(token=token)
    assert refreshed.title[0].value == "Transfer Studio" and refreshed.query_params["s"] == token
    # ... as does any page of the studio in that browser, but a made-up key opens nothing ...
    monkeypatch.setattr(gate, "browser_cookie", lambda: "a-made-up-key")
    assert_locked_with_token(open_app(token=token))
    # ... and the session link alone, opened in another browser, asks for the password.
    monkeypatch.setattr(gate, "browser_cookie", lambda: None)
    assert_locked_with_token(open_app(token=token))


def assert_locked_with_token(app) -> None:
    assert not app.exception
    assert [t.label for t in app.text_input] == ["Password"] and not app.title and not app.sidebar.caption


def test_without_a_password_there_is_no_gate(monkeypatch):
    monkeypatch.delenv("TRANSFER_PASSWORD", raising=False)
    app = open_app()
    assert not app.exception and app.title[0].value == "Transfer Studio" and not [t for t in app.text_input if t.label == "Password"]


def test_a_made_up_session_token_is_ignored_and_a_new_session_starts(transfer_home):
    made_up = "a" * 24
    app = open_app(token=made_up)
    assert not app.exception
    token = app.query_params["s"]
    assert token != made_up and is_issued_token(token)
    assert not (transfer_home / "sessions" / made_up).exists()
    assert (transfer_home / "sessions" / token).is_dir()


def test_a_token_the_server_issued_is_kept(transfer_home):
    token = issue_session_token()
    app = open_app("pages/data.py", token=token)
    assert not app.exception and app.query_params["s"] == token
    assert app.session_state["session_token"] == token


def test_an_unexpected_error_is_a_sentence_in_the_page_and_details_in_the_log(monkeypatch, caplog):
    def broken():
        raise RuntimeError("/srv/secret/path exploded")

    monkeypatch.setattr(sidebar, "render", broken)
    with caplog.at_level(logging.ERROR, logger="transfer.cli.studio"):
        app = open_app()
    assert not app.exception  # nothing reaches Streamlit's own error box (which shows tracebacks)
    assert [e.value for e in app.error] == [failures.SENTENCE]
    assert "/srv/secret" not in app.error[0].value
    assert "/srv/secret/path exploded" in caplog.text and "Traceback" in caplog.text


def test_an_open_network_address_without_a_password_shows_a_sentence(monkeypatch):
    from streamlit import config

    monkeypatch.delenv("TRANSFER_PASSWORD", raising=False)
    original = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        app = open_app()
    finally:
        config.set_option("server.address", original)
    assert not app.exception
    assert [e.value for e in app.error][0].startswith("Refusing to serve the studio on 0.0.0.0 without a password")
    assert not app.title and not app.sidebar.caption


def test_streamlits_own_stop_signal_is_not_taken_for_an_error(monkeypatch, caplog):
    import streamlit as st

    monkeypatch.setattr(sidebar, "render", st.stop)
    with caplog.at_level(logging.ERROR, logger="transfer.cli.studio"):
        app = open_app()
    assert not app.exception and not app.error and not app.title  # stopped before the page, silently
    assert "failed" not in caplog.text


def old_mode_context(tmp_path, registry: dict, current: str):
    from types import SimpleNamespace

    pages = {name: {"script_path": str(tmp_path / path)} for name, path in registry.items()}
    return SimpleNamespace(main_script_path=str(tmp_path / "app.py"), page_script_hash=current,
                           pages_manager=SimpleNamespace(get_pages=lambda: pages))


def test_a_page_knows_when_streamlits_old_pages_mode_ran_it_alone(tmp_path):
    old_mode = {"app": "app.py", "train": "pages/train.py", "data": "pages/data.py"}
    studio = {"home": "pages/home.py", "train": "pages/train.py"}
    assert pages_mode._run_alone_by_old_mode(old_mode_context(tmp_path, old_mode, "train"))
    assert not pages_mode._run_alone_by_old_mode(old_mode_context(tmp_path, old_mode, "app"))  # app.py runs
    assert not pages_mode._run_alone_by_old_mode(old_mode_context(tmp_path, studio, "train"))
    assert not pages_mode._run_alone_by_old_mode(old_mode_context(tmp_path, {"train": "app.py"}, "train"))
