"""The sidebar every page shares: the open project (and a switcher), device, chosen data set,
where the studio's jobs run, and the active training job."""

from __future__ import annotations

import logging
import os

import streamlit as st

from transfer.models.run_names import run_name
from ui import projects_view, session


@st.cache_resource
def device_description() -> str:
    from transfer.core.gpus import describe_device  # probes without torch in this process

    return describe_device()


@st.cache_resource
def has_gpu() -> bool:
    from transfer.core import gpus

    return gpus.has_gpu()


JOBS_LINE_SECONDS = 5  # how long one look at the job back end serves every page and session


@st.cache_data(ttl=JOBS_LINE_SECONDS, show_spinner=False)
def jobs_overview(backend_setting: str | None) -> dict:
    """The job back end's overview ({"kind", "label", "waiting", "running"}), or {"error": True}
    when it does not answer. Cached for a few seconds across sessions, failures too: every page
    draws this line, and a cluster that does not answer must not slow every page down.
    ``backend_setting`` (the Ray address, or None) is only the cache's key: a changed setting is
    looked at anew. It never reaches the browser."""
    from transfer.runtime.backends import job_backend

    try:
        backend = job_backend()
    except Exception as error:  # a broken setting: the page still draws, the line says so
        logging.getLogger(__name__).warning("The job back end could not be chosen: %s", error)
        return {"error": True, "label": None}
    try:
        overview = backend.overview()
    except Exception as error:  # a queue folder gone, a cluster's odd answer: the line says so, the page lives
        logging.getLogger(__name__).warning("The job back end did not answer: %s", error)
        return {"error": True, "label": backend.label}
    if overview.get("reachable") is False:  # a cluster that does not answer says so without raising
        return {"error": True, "label": backend.label}
    return {**overview, "label": backend.label}


def jobs_line() -> str:
    """Which back end runs the studio's jobs and how many wait, in one short line. Never the
    cluster's address, nor an error's text, which may carry it."""
    from transfer.runtime.backends import RAY_ADDRESS_ENV

    overview = jobs_overview(os.environ.get(RAY_ADDRESS_ENV))
    if overview.get("error"):
        if not overview.get("label"):
            return "Jobs: the back end is not answering right now"
        return f"Jobs run on {overview['label']} · not answering right now"
    where = f"Jobs run on {overview['label']}"
    waiting = overview.get("waiting") or 0
    return f"{where} · {waiting} waiting" if waiting else f"{where} · none waiting"


def render() -> None:
    with st.sidebar:
        projects_view.sidebar_switcher()
        st.caption(f"Device: **{device_description()}**")
        dataset = session.chosen_dataset()
        st.caption(f"Data set: **{dataset['name']}**" if dataset else "Data set: none chosen yet")
        # The line redraws itself every 2 s only while a run is queued or running: idle timers
        # in every open tab would cost the server for nothing. Starting a run reruns the page,
        # which starts the timer.
        st.fragment(_active_job, run_every=2 if _active_runs() else None)()


def _active_runs() -> list:
    from transfer.core.runs import ACTIVE_STATES, list_runs

    return [r for r in list_runs(session.runs_dir()) if r.state in ACTIVE_STATES]


def _active_job() -> None:
    st.caption(jobs_line())
    active = _active_runs()
    if not active:
        st.caption("No training running.")
        return
    run = active[-1]  # the oldest active run is the one the queue serves first
    status = run.status()
    if status.get("state") == "queued":
        place = status.get("queue_position")
        st.caption(f"{run_name(run)} is waiting" + (f" (place {place} in the queue)." if place else "."))
        return
    config = run.config
    if config.get("method") == "features" and config.get("hidden") is None and not config.get("dropout"):
        # a plain features head is fit once, not trained in epochs: its epoch count means nothing
        st.caption(f"Training {run_name(run)}: computing features and fitting the head.")
        return
    epochs = status.get("epochs") or config.get("epochs") or 1
    step, steps = status.get("step") or 0, status.get("steps") or 0
    fraction = min(1.0, ((status.get("epoch") or 0) + (step / steps if steps else 0)) / epochs)
    st.progress(fraction, text=f"Training {run_name(run)}: epoch {status.get('epoch') or 0}/{epochs}")
