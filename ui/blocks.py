"""How many blocks a backbone has, for the fine-tuning slider (computed once per backbone, in a
child process: counting needs torch, which the web server does not load)."""

import streamlit as st

from transfer.runtime.page_helpers import block_count_in_child


@st.cache_data(show_spinner="Counting the backbone's blocks ...", max_entries=64)
def block_count(backbone: str) -> int:
    return block_count_in_child(backbone)
