"""Transfer Studio: the web app's entry point. It only builds the navigation and the sidebar,
keeps the pages behind the password when one is set, and turns an unexpected error into a
sentence (the details go to the server's log, never to the browser)."""

import logging

import streamlit as st

from ui import gate, sidebar

st.set_page_config(page_title="Transfer Studio", page_icon="🧠", layout="wide")
gate.refuse_open_network()
log = logging.getLogger("transfer.studio")
if not log.handlers:  # app.py runs on every rerun; one handler is enough
    log.addHandler(logging.StreamHandler())
    log.handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/configure.py", title="Configure", icon="⚙️"),
    st.Page("pages/train.py", title="Train", icon="🚀"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="🔍"),
    st.Page("pages/predict.py", title="Predict", icon="🖼️"),
]

unlocked = gate.unlocked()
# The navigation is declared even while locked, so the page a link asked for opens after the password.
navigation = st.navigation(PAGES, position="sidebar" if unlocked else "hidden")
if not unlocked:
    gate.ask_for_password()

try:
    sidebar.render()
    navigation.run()
except Exception:  # Streamlit's stop and rerun signals are not Exceptions: they pass through
    log.exception("The %s page failed", navigation.title)
    st.error("Something went wrong on this page. Reload it to try again; if it keeps happening, "
             "the details are in the studio's server log.")
