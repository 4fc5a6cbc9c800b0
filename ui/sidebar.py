"""The sidebar every page shares: the open project (and a switcher), device, chosen data set,
and the active training job."""

from __future__ import annotations

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
    epochs = status.get("epochs") or run.config.get("epochs") or 1
    step, steps = status.get("step") or 0, status.get("steps") or 0
    fraction = min(1.0, ((status.get("epoch") or 0) + (step / steps if steps else 0)) / epochs)
    st.progress(fraction, text=f"Training {run_name(run)}: epoch {status.get('epoch') or 0}/{epochs}")
