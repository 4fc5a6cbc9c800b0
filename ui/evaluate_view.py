"""The Evaluate page's views: where a finished run is right and wrong on its validation pictures.

Accuracy, the confusion matrix (counts or shares), precision, recall and F1 per class, the
pictures the model got most wrong, "None of these" on the validation pictures, and the training
curves. All numbers come from the run's validation predictions (transfer.analysis.evaluate); no
model is loaded here.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from transfer.analysis.evaluate import PREDICTIONS_FILE, load_evaluation, prediction_thumbnail
from transfer.analysis.trust import Accuracy, run_accuracy
from transfer.models.novelty import NOT_AVAILABLE, novelty_info, validation_novelty
from ui import charts, label_view, predict_view

GALLERY_SIZE = 12
GALLERY_COLUMNS = 6


def evaluation_of(run):
    """The run's evaluation, read once per version of its predictions file."""
    return cached_evaluation(str(run.path), predictions_version(run))


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
    st.plotly_chart(confusion_heatmap(evaluation.confusion(normalised), evaluation.classes, normalised),
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
    st.plotly_chart(class_metric_bars(rows), key="per_class_bars")


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


# ----------------------------------------------------------------------------- figures


def confusion_heatmap(matrix: np.ndarray, classes: list[str], normalised: bool) -> go.Figure:
    """True classes down, predicted across; counts or the share of each true class."""
    text = [[f"{v:.0%}" if normalised else f"{int(v)}" for v in row] for row in matrix]
    figure = go.Figure(go.Heatmap(z=matrix.tolist(), x=classes, y=classes, text=text, texttemplate="%{text}",
                                  colorscale="Blues", zmin=0, zmax=1 if normalised else None,
                                  hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    size = max(320, min(720, 90 + 60 * len(classes)))
    figure.update_layout(height=size, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={"title": "predicted class", "type": "category", "side": "bottom"},
                         yaxis={"title": "true class", "type": "category", "autorange": "reversed"})
    return figure


def class_metric_bars(rows: list[dict]) -> go.Figure:
    """Precision, recall and F1 side by side for each class."""
    figure = go.Figure()
    for metric, colour in (("precision", "#2f6fdf"), ("recall", "#e4572e"), ("f1", "#3a9d5d")):
        figure.add_trace(go.Bar(name="F1" if metric == "f1" else metric, x=[r["class"] for r in rows],
                                y=[r[metric] for r in rows], marker_color=colour))
    figure.update_layout(barmode="group", height=320, yaxis={"range": [0, 1.02], "tickformat": ".0%"},
                         xaxis={"type": "category"}, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         legend={"orientation": "h", "y": -0.2})
    return figure
