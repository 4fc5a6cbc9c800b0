""""Share a demo" on the Predict and Evaluate pages: make a link to a frozen copy of a finished
run's model, and list (and revoke) this session's demo links.

The link is ``<base URL>/?demo=<token>``; the base URL is ``TRANSFER_PUBLIC_URL`` when set (a
studio behind a proxy), else the address the owner's browser is using. The tokens live in the
session's ``demos.json``; the demos themselves in ``$TRANSFER_HOME/demos`` (transfer.serving.share).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import streamlit as st

from transfer.serving import demo_collect
from transfer.core.errors import TransferError
from transfer.models.novelty import STRICTNESS
from transfer.core.runs import RunDir, find_run
from transfer.core.quota import DiskQuota
from transfer.models.run_names import run_name
from transfer.serving.share import (EXPIRY_CHOICES, MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS, OWNER_FILE, DemoStore,
                            default_title, demo_link, public_base_url)
from ui import predict_view, session

_LAST_LINK = "share_last_link"


def render(run: RunDir) -> None:
    """The "Share a demo" form for ``run`` and the list of this session's demo links."""
    store = DemoStore()
    record = session.workspace() / OWNER_FILE
    owned = store.owned(record)
    last_link = st.session_state.get(_LAST_LINK, {}).get(run.id)  # the link just made for this run
    with st.expander(":material/link: Share a demo", expanded=bool(owned) or bool(last_link)):
        st.caption("A link anyone can open to try this model on their own pictures, without seeing your data, "
                   "runs or this workspace. The model is copied: retraining or deleting the run changes nothing.")
        share_form(store, run, record)
        if last_link:
            st.success("Send this link; it works until it expires or you revoke it.", icon=":material/link:")
            st.code(last_link, language=None)
        demo_list(store, owned)


def share_form(store: DemoStore, run: RunDir, record) -> None:
    with st.form("share_form", clear_on_submit=False, border=False):
        title = st.text_input("Title", max_chars=MAX_TITLE_CHARS, key="share_title",
                              placeholder=default_title(run.labels() or []))
        description = st.text_area("Description (optional)", max_chars=MAX_DESCRIPTION_CHARS, key="share_description",
                                   height=80, help="Shown under the title; Markdown works.")
        expiry = st.selectbox("Expires after", list(EXPIRY_CHOICES), index=2, format_func=EXPIRY_CHOICES.get,
                              key="share_expiry")
        allow_download = st.checkbox("Visitors may download the model (bundle zip)", key="share_download",
                                     help="The bundle holds the model (ONNX and safetensors), its model card and "
                                          "a predict.py that runs without this studio.")
        strictness, include_reference = "normal", False
        if predict_view.has_novelty(run):
            strictness = st.radio(predict_view.STRICTNESS_QUESTION, list(STRICTNESS), index=1, horizontal=True,
                                  key="share_strictness", help=predict_view.STRICTNESS_HELP)
            include_reference = st.checkbox(
                "Send the \"None of these\" reference to visitors' devices", key="share_reference",
                help="Off by default. The reference holds what the model saw in your training pictures; with it, "
                     "anyone could test whether a given photo was one of them. Off, visitors' live camera and the "
                     "bundle answer with classes only, and \"None of these\" is judged on this server for the "
                     "pictures they send.")
        collect = st.checkbox("Keep the pictures visitors try, for me to label", key="share_collect",
                              help="Off by default. The demo page tells visitors before they drop anything; at most "
                                   "a few hundred pictures are kept, and revoking the link deletes them. They appear "
                                   "on the Data page as a pool of pictures without labels.")
        if not st.form_submit_button("Create the demo link", icon=":material/link:", type="primary"):
            return
    try:
        with st.spinner("Freezing a checked copy of the model for the demo ..."):
            token, demo = store.create(run.path, title=title, description=description, expires=expiry,
                                       allow_download=allow_download, owner_record=record,
                                       strictness=strictness, exports_in_child=True,
                                       include_reference=include_reference,
                                       quota=DiskQuota.for_session(session.workspace()))
            if collect:
                demo_collect.enable(demo.folder)
    except TransferError as error:
        st.error(str(error), icon=":material/error:")
        return
    st.session_state[_LAST_LINK] = {run.id: demo_link(base_url(), token)}
    st.rerun()  # the list below now holds the new demo


def _run_shown(run_id: str) -> str:
    """The run's readable name while it is in this project, else its id (the demo keeps its own copy)."""
    try:
        return run_name(find_run(session.runs_dir(), run_id))
    except TransferError:
        return f"`{run_id}`"


def demo_list(store: DemoStore, owned: list) -> None:
    if not owned:
        return
    st.markdown("**This session's demo links**")
    now = store.clock()
    for token, demo in owned:
        state = demo.state(now)
        columns = st.columns([3, 2, 2, 2, 1, 1.2])
        columns[0].markdown(f"**{demo.title}**" + ("" if state == "live" else f"  \n_{state}_"))
        columns[1].caption(f"run {_run_shown(demo.run_id)}")
        columns[2].caption(f"created {_when(demo.created_at)}")
        columns[3].caption("never expires" if demo.expires_at is None else
                           f"{'expired' if state == 'expired' else 'expires'} {_when(demo.expires_at)}")
        columns[4].caption(f"{demo.pictures_tried} picture{'' if demo.pictures_tried == 1 else 's'} tried"
                           + (f", {demo_collect.collected_count(demo)} kept" if demo_collect.settings_of(demo) else ""))
        if state == "live":
            columns[5].button("Revoke", key=f"revoke_{demo.id}", on_click=revoke, args=(store, token),
                              help="End this link now: visitors then see that it is no longer valid.")
            st.code(demo_link(base_url(), token), language=None)


def revoke(store: DemoStore, token: str) -> None:
    store.revoke(token)
    st.session_state.pop(_LAST_LINK, None)
    st.toast("The demo link is revoked.", icon=":material/lock:")


def base_url() -> str:
    """``TRANSFER_PUBLIC_URL``, else the scheme, host and port the owner's browser uses, plus the
    server's base path."""
    prefix = (st.get_option("server.baseUrlPath") or "").strip("/")
    browser = _browser_origin()
    default = f"{browser}/{prefix}" if prefix else browser
    return public_base_url(default) if browser else public_base_url()


def _browser_origin() -> str:
    url = st.context.url
    if url:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    host = st.context.headers.get("Host") if st.context.headers else None
    return f"http://{host}" if host else ""


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
