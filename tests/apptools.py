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
