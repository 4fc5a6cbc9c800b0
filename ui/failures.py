"""An unexpected error becomes one sentence in the page; its details go to the server's log.

Streamlit would otherwise show the exception with its traceback and server paths (the project's
config turns that off too: ``client.showErrorDetails = "none"``).
"""

from __future__ import annotations

import contextlib
import logging

import streamlit as st

log = logging.getLogger("transfer.cli.studio")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)

SENTENCE = ("Something went wrong on this page. Reload it to try again; if it keeps happening, "
            "the details are in the studio's server log.")


@contextlib.contextmanager
def shown_as_a_sentence(where: str):
    """Run a page; an unexpected exception is logged with its traceback and shown as ``SENTENCE``.

    Streamlit's stop and rerun signals are not ``Exception`` subclasses, so they pass through.
    """
    try:
        yield
    except Exception:
        log.exception("The %s page failed", where)
        st.error(SENTENCE)
