"""Helpers for AppTest: open the real app (navigation, sidebar) on a chosen page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def open_app(page: str | None = None, *, token: str | None = None, timeout: float = 60) -> AppTest:
    """The app after one run, on ``page`` (e.g. "pages/data.py"), in session ``token`` if given."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    if token:
        app.query_params["s"] = token
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    return app


def session_with_dataset(source, draft: dict | None = None) -> tuple[str, "Path"]:
    """A new browser session (its token and workspace) that already chose ``source`` as its data
    set, and optionally saved ``draft`` settings on the Configure page."""
    import json

    from transfer.runtime.access import issue_session_token, session_dir

    token = issue_session_token()
    workspace = session_dir(token)
    (workspace / "dataset.json").write_text(
        json.dumps({"source": str(source), "name": "tiny", "val_fraction": 0.2, "seed": 0}))
    if draft is not None:
        (workspace / "draft_config.json").write_text(json.dumps({**draft, "dataset_name": "tiny"}))
    return token, workspace
