"""Data: bring pictures in (zip, folder, class by class, webcam, demo), see what is wrong, set the split.

Everything a user uploads is written under this browser session's own workspace
(ui.data_sources_view); the check itself is :func:`transfer.data.dataset.check_dataset`, cached
per source, split and content (ui.data_report_view).
"""

from __future__ import annotations

import streamlit as st

from ui import cleanup_view, data_report_view, data_sources_view, label_view

st.title("Data")
st.caption("Bring labelled pictures in; they are checked before any training. Your uploads stay in this session.")
data_sources_view.show_notices()
data_sources_view.source_tabs()
cleanup_view.uploads_section()
st.divider()
data_report_view.report_section()
st.divider()
label_view.pool_section()
