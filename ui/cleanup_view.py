"""Deleting from the pages: a run or an upload (a whole project is deleted on Home, ``ui.projects_view``).

Every delete asks first ("Delete for good" / "Keep it"); the work is done by
:mod:`transfer.runtime.gc`, which refuses, with a sentence, to delete a run that is still training.
"""

from __future__ import annotations

import time

import streamlit as st

from transfer.runtime import gc
from transfer.data import uploads
from transfer.core.errors import TransferError
from transfer.analysis.trust import plural
from transfer.models.run_names import run_name
from transfer.core.quota import DiskQuota, QuotaExceeded, human_size
from ui import session
from ui.run_picker import RUN_PARAM

_NOTICE = "cleanup_notice"


def _notice_here(key: str) -> None:
    """The outcome of the last delete asked for by the control ``key``, shown once."""
    notice = st.session_state.get(_NOTICE)
    if notice and notice[0] == key:
        kind, text = notice[1], notice[2]
        del st.session_state[_NOTICE]
        (st.success if kind == "success" else st.error)(text)


def _confirmed(key: str, label: str, question: str, *, help: str | None = None) -> bool:
    """A delete button that asks first; True on the run where the user confirmed."""
    pending = f"confirm_delete:{key}"
    if not st.session_state.get(pending):
        if st.button(label, key=f"ask_delete:{key}", icon=":material/delete:", help=help):
            st.session_state[pending] = True
            st.rerun()
        return False
    with st.container(border=True):
        st.warning(question, icon=":material/warning:")
        yes, no = st.columns(2)
        if no.button("Keep it", key=f"keep:{key}"):
            st.session_state[pending] = False
            st.rerun()
        if yes.button("Delete for good", key=f"confirm:{key}", type="primary"):
            st.session_state[pending] = False
            return True
    return False


def _delete(key: str, action, done: str) -> None:
    """Run ``action`` (returns bytes freed); remember how it went for the next run of the page."""
    try:
        freed = action()
    except TransferError as error:
        st.session_state[_NOTICE] = (key, "error", str(error))
    else:
        st.session_state[_NOTICE] = (key, "success", f"{done} ({human_size(freed)} freed).")
    st.rerun()


# --------------------------------------------------------------------------- a run


def delete_run_control(run) -> None:
    """"Delete this run" under a run's view (Train, Evaluate); a live run must be stopped first."""
    key = "run"
    _notice_here(key)
    if run is None or not run.exists():
        return
    state = run.state
    if state in ("queued", "running"):
        st.caption("Stop this run to be able to delete it.")
        return
    question = (f"Delete the run {run_name(run)} for good? Its model, checkpoint and curves are removed; "
                "demo links already shared keep working.")
    if _confirmed(f"{key}:{run.id}", "Delete this run", question,
                  help="Removes the run's folder: model, checkpoint, history."):
        if st.query_params.get(RUN_PARAM) == run.id:
            del st.query_params[RUN_PARAM]
        _delete(key, lambda: gc.delete_run(session.runs_dir(), run.id), f"Deleted the run {run_name(run)}")


# --------------------------------------------------------------------------- uploads


def uploads_section() -> None:
    """The Data page's list of this session's uploads, its disk use against the quota, and deletes."""
    key = "upload"
    listed = uploads.list_uploads(session.uploads_dir())
    try:
        quota = DiskQuota.for_session(session.workspace())
    except QuotaExceeded as error:  # a misconfigured quota: say so, keep the page usable
        st.error(str(error))
        return
    used = quota.used()
    asking = any(st.session_state.get(f"confirm_delete:{key}:{item.id}") for item in listed)
    uploaded = sum(item.bytes for item in listed)
    # The uploads' own size, then the session's whole use (runs count too), each named for what it counts.
    with st.expander(f"Your uploads: {plural(len(listed), 'upload')}, {human_size(uploaded)}; this session uses "
                     f"{human_size(used)} of its {human_size(quota.limit)} (uploads and runs)",
                     expanded=asking or bool(st.session_state.get(_NOTICE))):
        _notice_here(key)
        st.progress(min(1.0, used / quota.limit), text=f"{human_size(used)} used of {human_size(quota.limit)} (uploads and runs)")
        if not listed:
            st.caption("Nothing uploaded yet.")
        for item in listed:
            _upload_row(key, item)


def _upload_row(key: str, item) -> None:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created_at))
    st.markdown(f"**{item.name}** · {human_size(item.bytes)} · {when}")
    chosen = session.chosen_dataset() or {}
    question = f"Delete the upload {item.name} for good? Runs trained on it keep their models."
    if _confirmed(f"{key}:{item.id}", f"Delete {item.name}", question):
        def action() -> int:
            freed = gc.delete_upload(session.uploads_dir(), item.id, session.runs_dir())
            if chosen.get("source") and uploads.upload_holds(item, chosen["source"]):
                session.forget_dataset()
            return freed

        _delete(key, action, f"Deleted {item.name}")
