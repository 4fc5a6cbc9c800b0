"""Evaluate: where a finished run is right and wrong, on its validation pictures.

Accuracy, the confusion matrix (counts or shares), precision, recall and F1 per class, the
pictures the model got most wrong, and the training curves. All numbers come from the run's
validation predictions (transfer.analysis.evaluate); no model is loaded here.
"""

from __future__ import annotations

import streamlit as st

from transfer.analysis.evaluate import PREDICTIONS_FILE, EvaluationNotReady, load_evaluation, prediction_thumbnail
from transfer.analysis.trust import Accuracy, run_accuracy
from transfer.models.novelty import NOT_AVAILABLE, novelty_info, validation_novelty
from ui import audit_view, charts, cleanup_view, export_view, label_view, predict_view, run_name_view, session, share_view

GALLERY_SIZE = 12
GALLERY_COLUMNS = 6

st.title("Evaluate")
st.caption("How the best epoch of a finished run does on the validation pictures it never trained on.")


@st.cache_data(max_entries=8, show_spinner=False)
def cached_evaluation(run_path: str, version: float):
    return load_evaluation(run_path)


def predictions_version(run) -> float:
    """The predictions file's mtime: a retrained run is read again."""
    try:
        return (run.path / PREDICTIONS_FILE).stat().st_mtime
    except FileNotFoundError:
        return 0.0


@st.cache_data(max_entries=512, show_spinner=False)
def gallery_picture(run_path: str, sha256: str, _config: dict, _prediction):
    image = prediction_thumbnail(_config, _prediction)
    return None if image is None else image.convert("RGB")


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def show_summary(run, evaluation) -> None:
    right = sum(1 for item in evaluation.predictions if item.correct)
    stored = run_accuracy(run.path)
    accuracy = Accuracy(right, evaluation.count, **({"cv_correct": stored.cv_correct, "cv_total": stored.cv_total,
                                                     "cv_folds": stored.cv_folds} if stored else {}))
    columns = st.columns(4)
    columns[0].metric("Accuracy", accuracy.headline(), help="Right answers on the validation pictures.")
    columns[1].metric("Macro F1", _percent(evaluation.macro_f1()),
                      help="The mean of the classes' F1 scores: every class counts the same, "
                           "however many pictures it has.")
    columns[2].metric("Validation pictures", evaluation.count)
    columns[3].metric("Best epoch", evaluation.epoch or "–")
    st.caption(f"Accuracy: {accuracy.describe()}.")
    if accuracy.cross_validated:
        st.info(accuracy.describe_cross_validation(), icon=":material/calculate:")


def show_confusion(evaluation) -> None:
    st.subheader("Confusion matrix")
    mode = st.radio("Show", ["counts", "share of each true class"], horizontal=True, key="confusion_mode")
    normalised = mode != "counts"
    st.plotly_chart(predict_view.confusion_heatmap(evaluation.confusion(normalised), evaluation.classes, normalised),
                    key="confusion_matrix")
    st.caption("Rows are the true classes, columns what the model said: the diagonal holds the right answers.")


def show_per_class(evaluation) -> None:
    st.subheader("Precision, recall and F1 per class")
    rows = [m.to_dict() for m in evaluation.per_class()]
    percent = {"min_value": 0, "max_value": 1, "format": "percent"}
    st.dataframe(rows, hide_index=True, width="stretch", key="per_class_table", column_config={
        "precision": st.column_config.ProgressColumn(
            "precision", help="Of the pictures called this class, the share that are.", **percent),
        "recall": st.column_config.ProgressColumn(
            "recall", help="Of the pictures of this class, the share found.", **percent),
        "f1": st.column_config.ProgressColumn("F1", help="The harmonic mean of precision and recall.", **percent),
        "support": st.column_config.NumberColumn("pictures"),
        "predicted": st.column_config.NumberColumn("predicted as"),
    })
    st.plotly_chart(predict_view.class_metric_bars(rows), key="per_class_bars")


def show_top_losses(run, evaluation) -> None:
    st.subheader("Most wrong")
    mistakes_only = st.toggle("Mistakes only", value=True, key="mistakes_only",
                              help="Off: also the right answers the model was least sure of.")
    worst = evaluation.top_losses(GALLERY_SIZE, mistakes_only=mistakes_only)
    if not worst:
        st.success("The model got every validation picture right.", icon=":material/done_all:")
        return
    st.caption("The validation pictures with the lowest probability for their true class, worst first.")
    for start in range(0, len(worst), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)
        for column, item in zip(columns, worst[start:start + GALLERY_COLUMNS]):
            picture = gallery_picture(str(run.path), item.sha256, run.config, item)
            if picture is None:
                column.caption(f"({item.path} is no longer on disk)")
            else:
                column.image(picture, width="stretch")
            mark = ":material/check_circle:" if item.correct else ":material/cancel:"
            column.caption(f"{mark} true **{evaluation.label(item.true_index)}** · said "
                           f"**{evaluation.label(item.predicted_index)}** {item.predicted_probability:.0%} · "
                           f"p(true) {item.true_probability:.0%}", help=item.path)
            if not item.correct:
                with column:
                    label_view.validation_corrections(run.config, item.path, evaluation.label(item.true_index),
                                                      evaluation.label(item.predicted_index), item.sha256,
                                                      evaluation.classes, f"correct_{item.sha256[:16]}")


def show_unknown(run) -> None:
    """How many validation pictures "None of these" would turn away: every one of them is of a
    known class, so this is the price of the strictness (the share it wrongly calls unknown)."""
    st.subheader("None of these")
    info, scores = novelty_info(run.path), validation_novelty(run.path)
    if info is None or scores is None:
        st.caption(NOT_AVAILABLE)
        return
    strictness = predict_view.strictness_control(run, "evaluate_strictness")
    threshold = info["thresholds"][strictness]
    unknown = sum(score > threshold for score in scores)
    columns = st.columns(2)
    columns[0].metric("Validation pictures called unknown", f"{unknown} of {len(scores)}",
                      help="These pictures all belong to a class, so each one counted here is a real picture the "
                           "model would turn away at this strictness.")
    columns[1].metric("Novelty threshold", f"{threshold:.3f}",
                      help=f"Set from the training pictures alone: {info['calibration']}.")
    st.caption(f"A picture further than {threshold:.3f} (cosine distance) from its k-th nearest training picture "
               f"(k = {info['k']}) is answered \"None of these\" on the Predict page, in demos, exports and `transfer predict`.")


def show_curves(run) -> None:
    history = run.epoch_history()
    if history:
        st.subheader("Training curves")
        st.plotly_chart(charts.training_curves(history), key="training_curves")


run = predict_view.choose_finished_run("evaluate_run")
if run is not None:
    try:
        evaluation = cached_evaluation(str(run.path), predictions_version(run))
    except EvaluationNotReady as error:
        st.info(str(error), icon=":material/info:")
        show_curves(run)
    else:
        show_summary(run, evaluation)
        show_confusion(evaluation)
        show_per_class(evaluation)
        show_top_losses(run, evaluation)
        show_unknown(run)
        show_curves(run)
        audit_view.run_feature_map_section(run)
        st.page_link("pages/predict.py", label="Try the model on new pictures", icon=":material/image:",
                     query_params={predict_view.RUN_PARAM: run.id, session.SESSION_PARAM: session.session_token()})
    export_view.download_section(run, "evaluate_export")
    share_view.render(run)
cleanup_view.delete_run_control(run)
if run is not None:
    run_name_view.rename_control(run)
