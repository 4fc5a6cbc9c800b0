"""What the Evaluate and Predict pages share: choosing a finished run, the model loaded once per
process, cached predictions of uploaded pictures, and the figures (confusion matrix, metrics per
class, top-k bars)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from transfer.core.errors import TransferError
from transfer.models.run_names import distinct_labels, run_name
from transfer.models.novelty import NOT_AVAILABLE, STRICTNESS, describe_answer, novelty_info
from transfer.core.runs import FINISHED, RunDir, find_run, list_runs
from ui import session

RUN_PARAM = "run"  # the same query parameter as the Train page, so links carry the chosen run over
DISPLAY_PIXELS = 480  # longest side of an uploaded picture as shown on the page
STRICTNESS_QUESTION = "How sure must it be that a picture belongs to a class?"
STRICTNESS_HELP = ("Pictures that look unlike every class the model learned are answered \"None of these\". "
                   "Relaxed, normal and strict let through about "
                   + ", ".join(f"{keep:.0%}" for keep in STRICTNESS.values())
                   + " of pictures like the training ones: stricter catches more strangers and doubts more "
                     "real pictures.")


# ----------------------------------------------------------------------------- choosing a run


def run_label(run: RunDir) -> str:
    """``Lite0 feature transfer, 6 Dec 21:42 · 94.1%``: the run's readable name and best accuracy."""
    accuracy = run.status().get("best_val_accuracy")
    shown = f"{accuracy:.1%}" if isinstance(accuracy, (int, float)) else "–"
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
    labels = distinct_labels(finished, run_label)
    chosen = st.selectbox("Run", ids, index=ids.index(wanted) if wanted in by_id else 0,
                          format_func=labels.get, key=key,
                          on_change=_link_to_chosen, args=(key,),
                          help="Only finished runs of this browser session are listed.")
    if not keep_link:
        st.query_params[RUN_PARAM] = chosen
    return by_id[chosen]


def _link_to_chosen(key: str) -> None:
    st.query_params[RUN_PARAM] = st.session_state[key]


# ----------------------------------------------------------------------------- the model, once per process


@st.cache_resource(max_entries=4, show_spinner="Loading the model ...")
def _load_predictor(run_path: str, weights_version: float):
    """One :class:`~transfer.serving.server_predict.ServerPredictor` per run and weights file, shared by
    every session of this server process (st.cache_resource builds each one once, under its own
    lock); ``weights_version`` (the weights' mtime) reloads retrained weights.

    The server never imports torch: the ONNX file is exported and checked by a child process,
    predictions run in onnxruntime here, and a model that cannot be exported is predicted by a
    child process picture by picture."""
    from transfer.serving.export import export_in_subprocess
    from transfer.serving.server_predict import ServerPredictor

    if not (Path(run_path) / "model.onnx").is_file():  # a shared demo's snapshot brings its own
        try:
            export_in_subprocess(run_path, "onnx")
        except TransferError:
            pass  # the recorded refusal sends predictions to a child process instead
    return ServerPredictor(run_path)


def predictor_for(run: RunDir):
    return _load_predictor(str(run.path), weights_version(run))


def weights_version(run: RunDir) -> float:
    try:
        return run.weights_path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# ----------------------------------------------------------------------------- predicting uploads


@dataclass
class PictureResult:
    """What the page shows for one picture: the picture, its top-k, the heat map, or the error."""

    name: str
    picture: np.ndarray | None = None
    prediction: dict | None = None  # Prediction.to_dict()
    overlay: np.ndarray | None = None
    cam_note: str = ""
    error: str = ""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.cache_data(max_entries=256, show_spinner=False)
def predict_picture(run_path: str, version: float, content_digest: str, name: str, _data: bytes, top_k: int,
                    with_cam: bool, strictness: str = "normal") -> PictureResult:
    """Top-k (and Grad-CAM when asked) of one uploaded picture, and whether it is "None of these"
    at ``strictness``; cached per run, content and options, so a rerun of the page (any click)
    predicts nothing again."""
    from transfer.data.images import thumbnail

    predictor = _load_predictor(run_path, version)
    try:
        picture = np.asarray(thumbnail(_data, DISPLAY_PIXELS))
        prediction = predictor.predict(_data, top_k, unknown_threshold=strictness)[0]
        result = PictureResult(name, picture, prediction.to_dict())
        if with_cam:  # Grad-CAM needs PyTorch: this server's explainer child makes it
            from transfer.serving.explainer import shared_explainer

            heat_map = shared_explainer().explain(run_path, _data)
            result.overlay, result.cam_note = heat_map.overlay, heat_map.note
    except (TransferError, OSError, ValueError) as error:
        return PictureResult(name, error=_sentence(name, error))
    return result


@st.cache_data(max_entries=16, show_spinner="Predicting every picture in the zip ...")
def predict_zip(run_path: str, version: float, content_digest: str, _data: bytes, top_k: int,
                strictness: str = "normal"):
    """The predictions (:class:`~transfer.serving.server_predict.ZipPredictions`) for the pictures in an
    uploaded zip, made by a ``transfer predict`` child process, or the sentence that says why the
    zip cannot be used."""
    from transfer.serving.server_predict import predict_zip_in_child

    try:
        return predict_zip_in_child(run_path, _data, top_k, strictness), ""
    except (TransferError, OSError, ValueError) as error:
        return None, _sentence("The zip", error)


def _sentence(name: str, error: Exception) -> str:
    text = str(error).strip() or "it is not a picture Transfer Studio can read"
    if not isinstance(error, TransferError):
        text = f"it could not be read ({text}); try saving it again as JPEG or PNG."
    return f"{name} cannot be used: {text}"


def render_picture(result: PictureResult, show_cam: bool, key: str) -> None:
    """The picture, its top-k as bars and, when asked, the Grad-CAM overlay beside it."""
    st.markdown(f"**{result.name}**")
    if result.error:
        st.error(result.error, icon=":material/error:")
        return
    columns = st.columns([1, 1.4, 1] if show_cam else [1, 1.4])
    columns[0].image(result.picture, width="stretch")
    prediction = result.prediction
    if prediction.get("unknown"):
        columns[1].markdown(f"Prediction: **None of these** (looks unlike every class; closest: "
                            f"{prediction['label']} {prediction['probability']:.0%})")
    else:
        columns[1].markdown(f"Prediction: **{prediction['label']}** ({prediction['probability']:.1%})")
    if prediction.get("novelty") is not None:
        columns[1].caption(f"Novelty {prediction['novelty']:.3f}: how unlike the training pictures it looks.")
    columns[1].plotly_chart(top_k_bars(prediction), key=f"topk_{key}")
    if show_cam:
        if result.overlay is not None:
            columns[2].image(result.overlay, width="stretch", caption=f"Where the model looked for "
                             f"'{prediction['label']}'")
            columns[2].caption(result.cam_note)
        else:
            columns[2].info(result.cam_note or "No heat map is available for this model.")


# ----------------------------------------------------------------------------- "None of these"


def has_novelty(run: RunDir) -> bool:
    """Whether the run can say "None of these" (trained with a novelty reference)."""
    return novelty_info(run.path) is not None


def strictness_control(run: RunDir, key: str, container=st) -> str:
    """The strictness picker for a run that can say "None of these"; for one trained before,
    the sentence that says so, once, and "normal" (which then never marks a picture unknown)."""
    if not has_novelty(run):
        container.caption(NOT_AVAILABLE)
        return "normal"
    return container.radio(STRICTNESS_QUESTION, list(STRICTNESS), index=1, horizontal=True, key=key,
                           help=STRICTNESS_HELP)


def answer_column(row: dict) -> str:
    """A batch table's answer: the class, or "None of these" with the closest class."""
    if not row.get("label"):
        return ""
    return describe_answer(row) if row.get("unknown") is True else row["label"]


# ----------------------------------------------------------------------------- figures


def top_k_bars(prediction: dict) -> go.Figure:
    """The top-k classes as horizontal bars, the most likely at the top."""
    labels = [item["label"] for item in prediction["top_k"]]
    values = [item["probability"] for item in prediction["top_k"]]
    figure = go.Figure(go.Bar(x=values, y=labels, orientation="h", text=[f"{v:.1%}" for v in values],
                              textposition="auto", marker_color=["#2f6fdf"] + ["#9db8ea"] * (len(values) - 1)))
    figure.update_layout(height=60 + 34 * len(labels), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability"},
                         yaxis={"autorange": "reversed", "type": "category"})
    return figure


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
