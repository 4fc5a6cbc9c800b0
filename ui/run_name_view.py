"""Renaming a run from the pages where it is shown (Train, Evaluate); its id stays the same."""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.models.run_names import MAX_RUN_NAME_CHARS, rename_run, run_name

_NOTICE = "run_name_notice"


def rename_control(run) -> None:
    """A "Rename this run" expander with the name field; the new name shows on every page."""
    if run is None or not run.exists():
        return
    notice = st.session_state.pop(_NOTICE, None)
    with st.expander("Rename this run", icon=":material/edit:", expanded=bool(notice)):
        if notice:
            (st.success if notice[0] == "success" else st.error)(notice[1])
        with st.form(f"rename_run:{run.id}", border=False):
            st.text_input("Name", value=run_name(run), key=f"run_name:{run.id}", max_chars=MAX_RUN_NAME_CHARS)
            st.form_submit_button("Save the name", on_click=_rename, args=(run,))


def _rename(run) -> None:
    try:
        name = rename_run(run, st.session_state.get(f"run_name:{run.id}") or "")
    except TransferError as error:
        st.session_state[_NOTICE] = ("error", str(error))
    else:
        st.session_state[_NOTICE] = ("success", f"The run is now called {name}.")
