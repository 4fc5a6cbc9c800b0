"""Pages wait for heavy work (the learning-rate finder, speed measurements) without doing it:
the work runs as a job in a worker process and a small fragment watches its folder."""

from __future__ import annotations

import streamlit as st

from transfer.core.runs import ACTIVE_STATES, RunDir

POLL_SECONDS = 1.0


def follow_job(run: RunDir, doing: str, key: str) -> None:
    """Show that ``run`` is waiting or working, re-checked every second without blocking the
    page; once it has ended the whole page runs again to show the result."""

    @st.fragment(run_every=POLL_SECONDS)
    def watch() -> None:
        status = run.status()
        if status["state"] not in ACTIVE_STATES:
            st.rerun()
        place = status.get("queue_position")
        if status["state"] == "queued":
            text = "waiting for the device" + (f" (place {place} in the queue)" if place else "")
        else:
            text = "working"
        st.info(f":material/hourglass_empty: {doing}: {text} ...", icon=None)

    with st.container(key=key):
        watch()


def session_jobs_manager():
    """The job manager for this browser session's helper jobs (not its training runs)."""
    from transfer.runtime.jobs import JobManager
    from ui import session

    return JobManager(session.workspace() / "jobs", max_queued=2)
