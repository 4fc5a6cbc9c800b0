"""The Data page's report of the chosen data set: what is wrong, what to do about it, the
counts, the split (with its controls), thumbnails and duplicates, then the label check.

The check itself is :func:`transfer.data.dataset.check_dataset`, cached per source, split and
content (:func:`ui.reports.dataset_report`).
"""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from ui import audit_view, data_view, session


def remember_split(choice: dict) -> None:
    """The split lives with the chosen data set (workspace/dataset.json), so every page uses it."""
    session.choose_dataset(
        choice["source"], choice["name"],
        val_fraction=float(st.session_state["val_fraction_widget"]), seed=int(st.session_state["split_seed_widget"]),
    )


def split_controls(report, choice: dict) -> None:
    st.markdown("**The split**  \n" + data_view.split_description(report))
    if report.split != "automatic":
        return
    # The chosen data set is the truth; the widgets show it, whichever page or tab changed it.
    st.session_state["val_fraction_widget"] = float(choice["val_fraction"])
    st.session_state["split_seed_widget"] = int(choice["seed"])
    fraction, seed = st.columns([3, 1])
    fraction.slider(
        "Share of each class kept for validation", 0.05, 0.5, step=0.05, format="%.2f",
        key="val_fraction_widget", on_change=remember_split, args=(choice,),
    )
    seed.number_input(
        "Seed", min_value=0, max_value=2**31 - 1, step=1,
        key="split_seed_widget", on_change=remember_split, args=(choice,),
    )


def report_section() -> None:
    """The chosen data set: its problems, advice, counts, split, thumbnails and duplicates, then the label check."""
    choice = session.chosen_dataset()
    if choice is None:
        st.info("No data set chosen yet: upload a zip or a folder, build classes, or try the demo data set above.")
        return
    heading, forget = st.columns([4, 1], vertical_alignment="bottom")
    heading.subheader(f"Data set: {choice['name']}")
    forget.button("Choose another", on_click=session.forget_dataset, help="Forget this choice (uploads are kept)")
    try:
        report = data_view.report_or_progress(choice)
    except TransferError as error:
        st.error(str(error))
        return
    if report is None:  # a large data set, checked in the background: the page comes back when done
        return
    data_view.render_problems(report)
    data_view.render_advice(report)
    data_view.render_summary(report)
    data_view.render_counts(report)
    split_controls(report, choice)
    data_view.render_thumbnails(report)
    data_view.render_skipped(report)
    data_view.render_duplicates(report)
    audit_view.check_labels_section(choice, report)
