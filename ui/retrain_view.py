"""Train again (Train page): when the data set changed since a run, train with the same settings
and show the two runs side by side on the same validation pictures.

Which run was trained again from which is kept in the session (``retrained.json``); the
comparison itself is :func:`transfer.analysis.compare.compare_runs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from transfer.analysis.compare import compare_runs
from transfer.training.config import TrainConfig
from transfer.data.samples import Dataset
from transfer.core.errors import TransferError
from transfer.core.runs import FINISHED, atomic_write_json, find_run
from transfer.models.run_names import run_name
from ui import reports, session

PAIRS_FILE = "retrained.json"  # {later run id: earlier run id}
RUN_PARAM = "run"
LISTED = 12


def retrained_pairs() -> dict[str, str]:
    try:
        pairs = json.loads((session.workspace() / PAIRS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return pairs if isinstance(pairs, dict) else {}


def data_changes(before: Dataset, now: Dataset) -> str:
    """What changed between a run's pictures and the data set now, in a few words."""
    old = {s.sha256: s.label for s in before.samples}
    new = {s.sha256: s.label for s in now.samples}
    added = len(set(new) - set(old))
    removed = len(set(old) - set(new))
    relabelled = sum(1 for sha, label in new.items() if sha in old and old[sha] != label)
    parts = [f"{count} picture(s) {what}" for count, what in
             ((added, "added"), (relabelled, "relabelled"), (removed, "removed")) if count]
    return ", ".join(parts) or "the split changed"


def run_dataset(run) -> Dataset | None:
    """The pictures a run trained on: recorded in its settings (web app), or its folder as it is now."""
    source = run.config.get("dataset")
    if isinstance(source, dict):
        return Dataset.from_dict(source)
    if not isinstance(source, str) or not Path(source).exists():
        return None
    report = reports.chosen_report({"source": source, "val_fraction": run.config.get("val_fraction", 0.2),
                                    "seed": run.config.get("split_seed", 0)})
    return report.dataset


def render(run) -> None:
    """Under the shown run: "Train again" when the data changed, and the comparison once retrained."""
    if run is None:
        return
    comparison_section(run)
    if run.state != FINISHED:
        return
    choice = session.chosen_dataset()
    if choice is None:
        return
    report = reports.chosen_report(choice)
    before = run_dataset(run)
    if report.dataset is None or not report.ok or before is None:
        return
    if before.fingerprint() == report.dataset.fingerprint():
        return
    with st.container(border=True):
        st.markdown(f"**The data set changed since this run:** {data_changes(before, report.dataset)}.")
        from_weights = False
        if run.config.get("method") == "finetune":
            from_weights = st.checkbox("Start from this run's weights", value=True, key="retrain_from_weights",
                                       help="Fine-tuning continues from what this run learned, instead of the "
                                            "catalogue's pretrained weights.")
        if st.button("Train again with the same settings", type="primary", icon=":material/refresh:", key="train_again"):
            train_again(run, report.dataset, from_weights)


def train_again(run, dataset: Dataset, from_weights: bool) -> None:
    settings = {k: v for k, v in run.config.items() if k not in ("job", "world_size")}
    settings["dataset"] = dataset.to_dict()
    try:
        if from_weights:
            from transfer.models import weights

            settings["initial_weights"] = weights.store_file(
                run.weights_path, session.runs_dir(), name=f"{run.id}/{run.weights_path.name}", origin="run",
                run=run.id).to_dict()
        config = TrainConfig.from_dict(settings).validate()
        new_run = session.job_manager().submit_all([config.to_dict()])[0]
    except (TransferError, OSError) as error:
        st.error(str(error) if isinstance(error, TransferError) else
                 f"The run could not be started ({error.strerror}); free some disk space and try again.")
        return
    atomic_write_json(session.workspace() / PAIRS_FILE, {**retrained_pairs(), new_run.id: run.id})
    st.query_params[RUN_PARAM] = new_run.id
    st.rerun()


@st.cache_data(max_entries=16, show_spinner=False)
def cached_comparison(before: str, after: str, version: float) -> dict:
    return compare_runs(before, after).to_dict()


def comparison_section(run) -> None:
    earlier_id = retrained_pairs().get(run.id)
    if not earlier_id:
        return
    try:
        earlier = find_run(session.runs_dir(), earlier_id)
    except TransferError:
        return
    st.subheader(f"Trained again: {run_name(earlier)} → {run_name(run)}")
    if run.state != FINISHED:
        st.caption("The side-by-side comparison appears here when this run finishes.")
        return
    predictions = run.path / "val_predictions.json"
    try:
        result = cached_comparison(str(earlier.path), str(run.path),
                                   predictions.stat().st_mtime if predictions.exists() else 0.0)
    except TransferError as error:
        st.info(str(error))
        return
    columns = st.columns(4)
    columns[0].metric("Accuracy before", f"{result['before_accuracy']:.1%}")
    columns[1].metric("Accuracy now", f"{result['after_accuracy']:.1%}", delta=f"{result['gain']:+.1%}")
    columns[2].metric("Wrong → right", len(result["wrong_to_right"]))
    columns[3].metric("Right → wrong", len(result["right_to_wrong"]))
    note = f"On the {result['pictures']} validation pictures both runs answered"
    if result["only_after"]:
        note += f" ({result['only_after']} validation picture(s) of the new run are new and not counted)"
    st.caption(note + ".")
    for title, changes in (("Wrong → right", result["wrong_to_right"]), ("Right → wrong", result["right_to_wrong"])):
        if changes:
            st.markdown(f"**{title}**")
            st.dataframe([{"picture": Path(c["path"]).name, "class": c["label"], "before": c["before"],
                           "now": c["after"]} for c in changes[:LISTED * 10]], hide_index=True, width="stretch",
                         key=f"changes_{title}")
