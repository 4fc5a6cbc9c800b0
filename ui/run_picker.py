"""The run picker of the Predict and Evaluate pages: this session's finished runs, the best one
on the current data set first, and ``?run=<id>`` links that carry the chosen run from page to page."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from transfer.analysis.trust import run_accuracy
from transfer.core.errors import TransferError
from transfer.data.samples import Dataset
from transfer.core.runs import FINISHED, RunDir, find_run, list_runs
from transfer.models.run_names import distinct_labels, run_name
from ui import session

RUN_PARAM = "run"  # the same query parameter as the Train page, so links carry the chosen run over


def run_label(run: RunDir) -> str:
    """``Lite0 feature transfer, 6 Dec 21:42 · 47 of 50 (94 %)``: the run's readable name and its validation
    accuracy as a count."""
    accuracy = run_accuracy(run.path)
    best = run.status().get("best_val_accuracy")
    shown = accuracy.short() if accuracy else f"{best:.1%}" if isinstance(best, (int, float)) else "–"
    return f"{run_name(run)} · {shown}"


def choose_finished_run(key: str) -> RunDir | None:
    """A picker over this session's finished runs, defaulting to ``?run=`` (or the newest).

    A link to a run that is still training (or failed) gets a sentence saying so; the link is
    then left as it is, so going back to the Train page still shows that run.
    """
    runs_dir = session.runs_dir()
    finished = [run for run in list_runs(runs_dir) if run.state == FINISHED]
    wanted, keep_link = st.query_params.get(RUN_PARAM), False
    if wanted:
        try:
            linked = find_run(runs_dir, wanted)
        except TransferError:
            st.warning("The run in this link does not belong to this session (or no longer exists).")
        else:
            if linked.state != FINISHED:
                keep_link = True
                st.info(f"Run `{linked.id}` is {linked.state}, not finished: its model and evaluation appear "
                        "here once training finishes." + (" Meanwhile you can pick a finished run below."
                                                          if finished else ""), icon=":material/hourglass_empty:")
    if not finished:
        st.info("There is no finished run in this session yet: train a model first.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/rocket_launch:")
        return None
    ids = [run.id for run in finished]
    by_id = {run.id: run for run in finished}
    best = best_run_of_current_data(finished)
    default = wanted if wanted in by_id else best.id if best else ids[0]
    labels = distinct_labels(finished, run_label)
    chosen = st.selectbox("Run", ids, index=ids.index(default), format_func=labels.get, key=key,
                          on_change=_link_to_chosen, args=(key,),
                          help="Only finished runs of this browser session are listed.")
    if best is not None and chosen == best.id and len(finished) > 1:
        st.caption("This is the best finished run on the current data set (the highest validation accuracy); "
                   "pick another above.")
    if not keep_link:
        st.query_params[RUN_PARAM] = chosen
    return by_id[chosen]


def best_run_of_current_data(finished: list[RunDir]) -> RunDir | None:
    """Among finished runs trained on the chosen data set as it is now (else all of them), the one with
    the highest validation accuracy; the newest among equals."""
    from ui import reports

    choice = session.chosen_dataset()
    candidates = finished
    if choice is not None:
        try:
            now = reports.chosen_report(choice).dataset
        except TransferError:
            now = None
        if now is not None:
            fingerprint = now.fingerprint()  # hashes every picture of the data set: once, not once per run
            same = [run for run in finished if _trained_on(run, fingerprint)]
            candidates = same or finished
    scored = [(accuracy.share, run) for run in candidates
              if (accuracy := run_accuracy(run.path)) is not None and accuracy.share is not None]
    if not scored:
        return None
    best = max(score for score, _ in scored)
    return next(run for score, run in scored if score == best)  # list_runs gives the newest first


def _trained_on(run: RunDir, fingerprint: str) -> bool:
    dataset = run_dataset(run)
    return dataset is not None and dataset.fingerprint() == fingerprint


def _link_to_chosen(key: str) -> None:
    st.query_params[RUN_PARAM] = st.session_state[key]


def run_dataset(run) -> Dataset | None:
    """The pictures a run trained on: recorded in its settings (web app), or its folder as it is now."""
    from ui import reports

    source = run.config.get("dataset")
    if isinstance(source, dict):
        return Dataset.from_dict(source)
    if not isinstance(source, str) or not Path(source).exists():
        return None
    report = reports.chosen_report({"source": source, "val_fraction": run.config.get("val_fraction", 0.2),
                                    "seed": run.config.get("split_seed", 0)})
    return report.dataset
