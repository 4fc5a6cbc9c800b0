"""Transfer Studio: the web app's entry point. It only builds the navigation and the sidebar."""

import streamlit as st

from ui import demo_view, sidebar

st.set_page_config(page_title="Transfer Studio", page_icon="🧠", layout="wide")

# A demo link (?demo=TOKEN) shows one shared model and nothing else: no navigation, no sidebar,
# no session token, no password. It must stay before the session, password and sidebar code.
if demo_view.requested():
    st.navigation([st.Page(demo_view.render, title="Demo", url_path="demo")], position="hidden").run()
    st.stop()

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/configure.py", title="Configure", icon="⚙️"),
    st.Page("pages/train.py", title="Train", icon="🚀"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="🔍"),
    st.Page("pages/predict.py", title="Predict", icon="🖼️"),
]

navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
