"""The Predict page's answers: the model loaded once per process, cached predictions of
uploaded pictures, how one picture's answer is drawn (top-k bars, heat map), and the "None of
these" strictness picker (which Evaluate shares). Choosing a run is ui.run_picker; Evaluate's
views are ui.evaluate_view."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from transfer.analysis.trust import UnsureMargin, describe_unsure, run_unsure_margin, unsure_pair
from transfer.core.errors import TransferError
from transfer.models.novelty import NOT_AVAILABLE, STRICTNESS, describe_answer, novelty_info
from transfer.core.runs import RunDir

DISPLAY_PIXELS = 480  # longest side of an uploaded picture as shown on the page
# A 64-megapixel picture takes about 200 MB while it is decoded: however many visitors drop
# pictures at once, only this many are decoded in the web server at the same time.
DECODE_SLOTS_ENV = "TRANSFER_SERVER_DECODES"
DECODE_SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get(DECODE_SLOTS_ENV, "") or 2)))
STRICTNESS_QUESTION = "How sure must it be that a picture belongs to a class?"
STRICTNESS_HELP = ("Pictures that look unlike every class the model learned are answered \"None of these\". "
                   "Relaxed, normal and strict let through about "
                   + ", ".join(f"{keep:.0%}" for keep in STRICTNESS.values())
                   + " of pictures like the training ones: stricter catches more strangers and doubts more "
                     "real pictures.")


# ----------------------------------------------------------------------------- how sure answers are


@st.cache_data(max_entries=64, show_spinner=False)
def unsure_margin(run_path: str, version: float) -> UnsureMargin:
    """The run's "not sure" margin, measured on its validation answers (cached per weights file)."""
    return run_unsure_margin(run_path)


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
    """Changes with the weights, and when the served model changes (an int8 model made, or the
    owner's choice of precision), so the cached predictor is loaded again."""
    from transfer.serving.export import PRECISION_CHOICE_FILE, served_onnx

    try:
        version = run.weights_path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
    try:
        served = served_onnx(run.path)
    except TransferError:
        served = None
    for path in (served, run.path / PRECISION_CHOICE_FILE):
        if path is not None and path.is_file():
            version = max(version, path.stat().st_mtime)
    return version


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
    top_k: int = 0  # classes to show (the prediction holds at least two, to tell an unsure answer)
    precision: str = "float32"  # "int8": answered by the smaller model (it passed its check)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def predict_picture(run_path: str, version: float, content_digest: str, name: str, data: bytes, top_k: int,
                    with_cam: bool, strictness: str = "normal") -> PictureResult:
    """Top-k (and Grad-CAM when asked) of one uploaded picture, and whether it is "None of these"
    at ``strictness``. What the server computes is cached by the picture's content only: the full
    ranking once per run, content and strictness, the heat map once per run and content; the
    file's name and the number of classes shown are applied here. So a rerun, a new name or a
    moved "Classes to show" slider computes nothing again."""
    ranked = rank_picture(run_path, version, content_digest, data, strictness)
    result = replace(ranked, name=name, error=_sentence(name, ranked.error) if ranked.error else "")
    if result.error:
        return result
    # two classes at least, to tell an unsure answer; render_picture shows ``top_k`` of them
    result.prediction = {**ranked.prediction, "top_k": ranked.prediction["top_k"][:max(2, top_k)]}
    result.top_k = max(1, top_k)
    if with_cam:
        result.overlay, result.cam_note = explain_picture(run_path, version, content_digest, data)
    return result


@st.cache_data(max_entries=256, show_spinner=False)
def rank_picture(run_path: str, version: float, content_digest: str, _data: bytes,
                 strictness: str = "normal") -> PictureResult:
    """The thumbnail and every class of one picture, most likely first (no name: the error, if
    any, is the reason alone). Decoding waits for one of the server's few decode slots."""
    from transfer.data.images import thumbnail

    predictor = _load_predictor(run_path, version)
    try:
        with DECODE_SLOTS:
            picture = np.asarray(thumbnail(_data, DISPLAY_PIXELS))
            prediction = predictor.predict(_data, len(predictor.labels), unknown_threshold=strictness)[0]
    except (TransferError, OSError, ValueError) as error:
        return PictureResult("", error=_reason(error))
    return PictureResult("", picture, prediction.to_dict(), precision=getattr(predictor, "precision", "float32"))


@st.cache_data(max_entries=64, show_spinner=False)
def explain_picture(run_path: str, version: float, content_digest: str, _data: bytes) -> tuple:
    """The Grad-CAM overlay and its note for one picture (this server's explainer child makes it)."""
    from transfer.serving.explainer import shared_explainer

    try:
        heat_map = shared_explainer().explain(run_path, _data)
    except (TransferError, OSError, ValueError) as error:
        return None, _reason(error)
    return heat_map.overlay, heat_map.note


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


def _reason(error: Exception) -> str:
    text = str(error).strip() or "it is not a picture Transfer Studio can read"
    if not isinstance(error, TransferError):
        text = f"it could not be read ({text}); try saving it again as JPEG or PNG."
    return text


def _sentence(name: str, error: Exception | str) -> str:
    return f"{name} cannot be used: {error if isinstance(error, str) else _reason(error)}"


def render_picture(result: PictureResult, show_cam: bool, key: str, unsure: UnsureMargin | None = None) -> None:
    """The picture, its top-k as bars and, when asked, the Grad-CAM overlay beside it; an answer whose two
    likeliest classes lie within ``unsure``'s margin reads "not sure: <a> or <b>"."""
    st.markdown(f"**{result.name}**")
    if result.error:
        st.error(result.error, icon=":material/error:")
        return
    columns = st.columns([1, 1.4, 1] if show_cam else [1, 1.4])
    columns[0].image(result.picture, width="stretch")
    prediction = result.prediction
    pair = unsure_pair(prediction["top_k"], unsure.margin) if unsure is not None else None
    if prediction.get("unknown"):
        columns[1].markdown(f"Prediction: **None of these** (looks unlike every class; closest: "
                            f"{prediction['label']} {prediction['probability']:.0%})")
    elif pair:
        first, second = prediction["top_k"][0]["probability"], prediction["top_k"][1]["probability"]
        columns[1].markdown(f"Prediction: **{describe_unsure(pair)}** ({first:.1%} / {second:.1%})")
        columns[1].caption(f"The two likeliest classes are closer than {unsure.how}.")
    else:
        columns[1].markdown(f"Prediction: **{prediction['label']}** ({prediction['probability']:.1%})")
    if result.top_k:
        prediction = {**prediction, "top_k": prediction["top_k"][:result.top_k]}
    if prediction.get("novelty") is not None:
        columns[1].caption(f"Novelty {prediction['novelty']:.3f}: how unlike the training pictures it looks.")
    if result.precision == "int8":
        columns[1].caption("Answered by the smaller int8 model, checked against the full model on the validation "
                           "pictures.")
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


