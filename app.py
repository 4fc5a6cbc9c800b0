"""Transfer Studio: the web app's entry point. It only builds the navigation and the sidebar,
keeps the pages behind the password when one is set, and turns an unexpected error into a
sentence (the details go to the server's log, never to the browser)."""

from pathlib import Path

import streamlit as st

from transfer.runtime.gc import collect_now_and_then
from ui import demo_view, failures, gate, sidebar

STUDIO_ICON = Path(__file__).resolve().parent / "ui" / "assets" / "icon.png"

# The icon is a file of our own, served by this server: a material-symbol icon made the browser fetch
# it from a font host on every page, which fails offline and tells a third party the studio is open.
st.set_page_config(page_title="Transfer Studio", page_icon=str(STUDIO_ICON), layout="wide")
gate.refuse_open_network()

# A demo link (?demo=TOKEN) shows one shared model and nothing else: no navigation, no sidebar,
# no session token, no password. It must stay before the session, password and sidebar code.
if demo_view.requested():
    with failures.shown_as_a_sentence("demo"):
        st.navigation([st.Page(demo_view.render, title="Demo", url_path="demo")], position="hidden").run()
    st.stop()

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/configure.py", title="Configure", icon=":material/tune:"),
    st.Page("pages/train.py", title="Train", icon=":material/rocket_launch:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/query_stats:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image:"),
]

unlocked = gate.unlocked()
# The navigation is declared even while locked, so the page a link asked for opens after the password.
navigation = st.navigation(PAGES, position="sidebar" if unlocked else "hidden")
if not unlocked:
    gate.ask_for_password()

collect_now_and_then()  # removes idle sessions and shrinks caches, at most once an hour, in the background
with failures.shown_as_a_sentence(navigation.title):
    sidebar.render()
    navigation.run()
