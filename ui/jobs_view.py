"""Pages wait for heavy work (label audits, feature maps, suggestions, the learning-rate
finder, speed measurements) without doing it: the work runs as a job in a worker process
(:mod:`transfer.runtime.side_jobs`) and a small fragment watches it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from transfer.core.runs import ACTIVE_STATES, RunDir
from transfer.runtime.side_jobs import DONE, FAILED, RUNNING, STOPPED, SideJob

POLL_SECONDS = 1.0
_PHASES = {"features": "Computing features", "heads": "Judging every picture with heads that never saw it",
           "map": "Drawing the map"}


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


def side_job(folder: Path | str) -> SideJob:
    """The side job kept in ``folder``, run as one of this session's helper jobs."""
    return SideJob(folder, session_jobs_manager())


@st.fragment(run_every=POLL_SECONDS)
def job_progress(folder: str) -> None:
    """A progress bar that follows the side job and reruns the page once it has ended."""
    job = SideJob(folder)
    if job.state != RUNNING:
        st.rerun()
    progress = job.progress()
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    phase = _PHASES.get(progress.get("phase"), "Waiting for the machine, then starting")
    text = f"{phase}: {done}/{total}" if total else f"{phase} ..."
    st.progress(min(1.0, done / total) if total else 0.0, text=text)


def job_outcome(job: SideJob, start_label: str, start) -> dict | None:
    """The side job's result when done; otherwise its progress, error or a button that starts it."""
    state = job.state
    if state == RUNNING:
        job_progress(str(job.folder))
        return None
    if state == FAILED:
        st.error(job.error() or "The check stopped unexpectedly.")
    elif state == STOPPED:
        st.warning("The last check stopped before it finished; start it again.")
    if state == DONE:
        return job.result()
    st.button(start_label, on_click=start, type="primary", icon=":material/search:", key=f"start:{job.folder.name}")
    return None
