"""Keep Streamlit's old "pages directory" mode away from the studio, so that every visit runs app.py.

How Streamlit 1.67 decides (``streamlit/runtime/pages_manager.py``, ``scriptrunner/script_runner.py``):
once per server process, when the first browser session connects, a flag is set to whether a
``pages/`` folder lies beside the entry script. While it is set, every script run goes through
``_mpa_v1``, which lists ``app.py`` and each ``pages/*.py`` file by its raw name and runs only
the page the URL names; only an ``st.navigation`` call, which app.py makes, clears it for the
whole process. So on a fresh server, a link into a page as the first visit (``/train?run=...``)
ran that page alone, under the raw file list with an "app" entry, without app.py's sidebar or
password, until somebody opened the home page.

The studio keeps its top-level ``pages/`` folder and settles this in two places:

- ``declare_own_navigation``: the launcher (``./studio app``, ``python -m ui.launch``) clears
  the flag before the server starts, so no run ever takes the old path.
- ``run_through_app_py``: for a server started some other way (``streamlit run app.py``), a page
  that finds itself run alone by the old mode clears the flag and reruns; the rerun goes through
  app.py, which opens the same page inside the studio. A page calls it before showing anything
  (``ui.session`` does, for every page that has a workspace).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx


def declare_own_navigation() -> None:
    """Tell Streamlit that app.py's ``st.navigation`` lists the pages (before any session exists)."""
    PagesManager.uses_pages_directory = False


def run_through_app_py() -> None:
    """Rerun through app.py when Streamlit's old mode ran this page by itself."""
    ctx = get_script_run_ctx()
    # AppTest re-decides the mode before each of its runs (and its config patch is not visible
    # from the script thread), so under AppTest the check would rerun every click away.
    if ctx is None or _driven_by_apptest() or not _run_alone_by_old_mode(ctx):
        return
    declare_own_navigation()
    st.rerun()


def _driven_by_apptest() -> bool:
    # A served studio never imports Streamlit's testing package; AppTest always has.
    return "streamlit.testing.v1.app_test" in sys.modules


def _run_alone_by_old_mode(ctx) -> bool:
    # The studio's own navigation never lists the entry script; the old mode always does.
    entry = Path(ctx.main_script_path).resolve()
    pages = ctx.pages_manager.get_pages()
    current = (pages.get(ctx.page_script_hash) or {}).get("script_path")
    listed = [Path(page["script_path"]).resolve() for page in pages.values() if page.get("script_path")]
    return bool(current) and Path(current).resolve() != entry and entry in listed
