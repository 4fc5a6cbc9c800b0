"""The learning-rate finder of the Configure page: a short range test (as fastai's lr_find) run
as a side job of the session, its progress while it runs, then its curve and a button that
puts its suggestion into the learning-rate field."""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.runtime.side_jobs import DONE, RUNNING, SideJob
from transfer.training.config import TrainConfig
from ui import charts, jobs_view, session

FINDER_STEPS = 60
FOUND_KEY = "lr_found"  # the finder's last result in this browser session
_WAITING_KEY = "lr_job"  # set while this session waits for a finder it started


def finder_job() -> SideJob:
    return jobs_view.side_job(session.workspace() / "lr_find")


def start_finder(dataset, method: str, backbone: str, image_size: int, batch_size: int) -> None:
    """Queue the range test as a job of this session; the page follows it without waiting."""
    try:
        trial = TrainConfig.for_method(method, dataset=dataset.to_dict(), backbone=backbone,
                                       image_size=image_size, batch_size=batch_size)
    except TransferError as error:
        st.error(str(error))
        return
    finder_job().start({"job": "lr_find", "train": trial.to_dict(), "steps": FINDER_STEPS})
    st.session_state[_WAITING_KEY] = True
    st.session_state.pop(FOUND_KEY, None)


def show_finder(method: str, lr_key: str, left, right) -> None:
    """The finder's progress while it runs, then its curve and a button to use its suggestion."""
    if st.session_state.get(_WAITING_KEY):
        job = finder_job()
        if job.state == RUNNING:
            with right:
                jobs_view.follow_job(job.run(), "Trying learning rates from 1e-7 to 10", key="lr_progress")
            return
        del st.session_state[_WAITING_KEY]
        result = job.result() if job.state == DONE else None
        if result is None or "suggestion" not in result:
            st.error(job.error() or "The learning-rate finder stopped unexpectedly.")
        else:
            st.session_state[FOUND_KEY] = result
    found = st.session_state.get(FOUND_KEY)
    if found and found["method"] == method:
        right.plotly_chart(charts.lr_finder_curve(found["lrs"], found["losses"], found["suggestion"]),
                           key="lr_curve")
        left.button(f"Use {found['suggestion']:.1e}", key="use_lr", on_click=st.session_state.__setitem__,
                    args=(lr_key, min(1.0, max(1e-6, float(f"{found['suggestion']:.1e}")))))
