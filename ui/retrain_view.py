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
from transfer.analysis.evaluate import ValPrediction, prediction_thumbnail
from transfer.analysis.trust import Accuracy, paired_change, plural, run_accuracy, unpaired_change
from transfer.training.config import TrainConfig
from transfer.data.samples import Dataset
from transfer.core.errors import TransferError
from transfer.core.runs import FINISHED, find_run
from transfer.core.files import atomic_write_json
from transfer.models.run_names import run_name
from ui import reports, session
from ui.run_picker import RUN_PARAM, run_dataset

PAIRS_FILE = "retrained.json"  # {later run id: earlier run id}
LISTED = 12
COLUMNS = 6
THUMBNAIL = 96


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
    parts = [f"{plural(count, 'picture')} {what}" for count, what in
             ((added, "added"), (relabelled, "relabelled"), (removed, "removed")) if count]
    return ", ".join(parts) or "the split changed"


def changed_data(run) -> tuple[Dataset, str] | None:
    """When the chosen data set changed since ``run`` (a finished run): the data set now, and what changed."""
    if run is None or run.state != FINISHED:
        return None
    choice = session.chosen_dataset()
    if choice is None:
        return None
    report = reports.chosen_report(choice)
    before = run_dataset(run)
    if report.dataset is None or not report.ok or before is None:
        return None
    if before.fingerprint() == report.dataset.fingerprint():
        return None
    return report.dataset, data_changes(before, report.dataset)


def offer(run, dataset: Dataset, changes: str) -> None:
    """The Train page's one primary action once the data set changed: train again and compare."""
    with st.container(border=True):
        st.markdown(f"**The data set changed since {run_name(run)}:** {changes}. Train again with the same "
                    "settings to see, on the same validation pictures, whether it helped.")
        from_weights = False
        if run.config.get("method") == "finetune":
            from_weights = st.checkbox("Start from this run's weights", value=True, key="retrain_from_weights",
                                       help="Fine-tuning continues from what this run learned, instead of the "
                                            "catalogue's pretrained weights.")
        if st.button("Train again and compare", type="primary", icon=":material/refresh:", key="train_again"):
            train_again(run, dataset, from_weights)


def render(run) -> None:
    """Under the shown run: the comparison with the run it was trained again from."""
    if run is None:
        return
    comparison_section(run)


def train_again(run, dataset: Dataset, from_weights: bool) -> None:
    settings = {k: v for k, v in run.config.items() if k not in ("job", "world_size")}
    settings["dataset"] = dataset.to_dict()
    try:
        if from_weights:
            from transfer.models import weights

            settings["initial_weights"] = weights.store_file(
                run.weights_path, session.runs_dir(), name=f"{run.id}/{run.weights_path.name}", origin="run",
                run=run.id).to_dict()
        config = TrainConfig.from_dict(settings)
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
    total = result["pictures"]
    better, worse = len(result["wrong_to_right"]), len(result["right_to_wrong"])
    before = Accuracy(round(result["before_accuracy"] * total), total)
    after = Accuracy(round(result["after_accuracy"] * total), total)
    change = paired_change(before.correct, after.correct, total, better, worse)
    columns = st.columns(4)
    columns[0].metric("Accuracy before", before.headline(), help=before.describe())
    # Grey when chance alone could give the change: a red or green arrow would claim more than it can tell.
    columns[1].metric("Accuracy now", after.headline(), delta=f"{change.points:+.0f} points" if change.points else None,
                      delta_color="off" if change.within_chance else "normal", help=after.describe())
    columns[2].metric("Wrong → right", better)
    columns[3].metric("Right → wrong", worse)
    said = change.describe()
    (st.info if change.within_chance else st.success if change.points > 0 else st.warning)(
        f"On the same {plural(total, 'validation picture')}: {before.short()} right before, {after.describe()} "
        f"now. {said[0].upper()}{said[1:]}.")
    cross_validated_comparison(earlier, run)
    if result["only_after"]:
        st.caption(f"{result['only_after']:,} of the new run's validation pictures are new and not counted.")
    for title, changes in (("Wrong → right", result["wrong_to_right"]), ("Right → wrong", result["right_to_wrong"])):
        if changes:
            st.markdown(f"**{title}**")
            change_thumbnails(run, changes, key=title)


def cross_validated_comparison(earlier, run) -> None:
    """Both runs' cross-validated accuracies over all their labelled pictures, when they have them: with
    few pictures the steadier figures, compared like with like (each over every labelled picture)."""
    first, second = run_accuracy(earlier.path), run_accuracy(run.path)
    if second is None or not second.cross_validated:
        return
    now = Accuracy(second.cv_correct or 0, second.cv_total or 0)
    if first is None or not first.cross_validated:
        st.caption(f"Cross-validated over all labelled pictures now: {now.describe()}.")
        return
    then = Accuracy(first.cv_correct or 0, first.cv_total or 0)
    st.caption(f"Cross-validated over all labelled pictures (used because the data set is small): "
               f"{then.describe()} before, {now.describe()} now; {unpaired_change(then, now).describe()}.")


@st.cache_data(max_entries=256, show_spinner=False)
def change_picture(_config: dict, change: dict):
    """A validation picture of the comparison: its file where the run found it, else its decoded copy."""
    # Only the picture's path and content hash are read; the indices and probabilities do not matter here.
    picture = prediction_thumbnail(_config, ValPrediction(change["path"], change["sha256"], 0, 0, ()), THUMBNAIL)
    return None if picture is None else picture.convert("RGB")


def change_thumbnails(run, changes: list[dict], key: str) -> None:
    """The pictures whose answer changed, each with its class and both answers under it."""
    shown = changes[:LISTED]
    for start in range(0, len(shown), COLUMNS):
        for column, change in zip(st.columns(COLUMNS), shown[start:start + COLUMNS]):
            with column:
                picture = change_picture(run.config, change)
                if picture is not None:
                    st.image(picture, width=THUMBNAIL)
                st.caption(f"{Path(change['path']).name}: is {change['label']}; "
                           f"said {change['before']}, now {change['after']}")
    if len(changes) > LISTED:
        st.caption(f"The first {LISTED} of {len(changes)} are shown.")
