"""Transfer Studio: the web app's entry point. It only builds the navigation and the sidebar."""

import streamlit as st

from transfer.gc import collect_now_and_then
from ui import sidebar

st.set_page_config(page_title="Transfer Studio", page_icon="🧠", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/configure.py", title="Configure", icon="⚙️"),
    st.Page("pages/train.py", title="Train", icon="🚀"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="🔍"),
    st.Page("pages/predict.py", title="Predict", icon="🖼️"),
]

collect_now_and_then()  # removes idle sessions and shrinks caches, at most once an hour, in the background
navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
