"""Live camera on the Predict page and on demo links: the model runs in the visitor's browser.

The "Live camera" button opens a camera view (a Streamlit component whose files are
``transfer/serving/web_assets``, served by the studio itself) that classifies frames one after another
with onnxruntime-web on the run's checked ONNX export, and shows class bars and how many
pictures a second it manages. No frame leaves the device: the server sends the model once per
page (the bytes travel as a component argument, so no URL exists that another session could
fetch) and then does nothing while the camera runs. Later reruns pass only the model's opaque id;
a view that was drawn anew without the model (after a page switch, say) asks for it, and the
next run sends the bytes again. "Explain this frame" sends that one frame back, and the page
shows it with the usual Grad-CAM.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from transfer.core.errors import TransferError
from transfer.serving.web_page import ASSETS, browser_info, require_runtime

_live_camera = components.declare_component("live_camera", path=str(ASSETS))
FRAME_HEIGHT = 420
#: Larger models would not fit in one of Streamlit's messages (server.maxMessageSize, 200 MB by
#: default) and would take minutes to reach a phone.
MAX_MODEL_MB = 150
COUNTER_BYTES = 4  # the component puts a click counter before the PNG, so every click is news


def model_files(folder: Path) -> tuple[Path, dict]:
    """The ONNX file and model.json the browser runs: a demo snapshot's ``live.onnx`` (without the
    novelty reference) or own ``model.onnx``, or a run's checked export (made by a child process on
    first use, never in the server). Always float32: the int8 model answered the live camera more
    slowly in onnxruntime-web (measured in chromium on a Lite0 features run, ants and bees, 2 cores:
    8.6 against 11.4 answers a second; the model alone 80 against 64 ms), so it is not used here."""
    from transfer.serving.export import export_in_subprocess, without_reference
    from transfer.serving.share import LIVE_ONNX_FILE

    onnx = folder / "model.onnx"
    kept_on_server = (folder / LIVE_ONNX_FILE).is_file()  # a demo whose owner keeps the reference here
    if kept_on_server:
        onnx = folder / LIVE_ONNX_FILE
    elif not onnx.is_file():
        onnx = export_in_subprocess(folder, "onnx").path
    try:
        info = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        raise TransferError("This model's description (model.json) cannot be read; train the model again.") from None
    return onnx, without_reference(info) if kept_on_server else info


def opaque_id(onnx: Path) -> str:
    """Names this version of the model for the browser without telling it any path."""
    stat = onnx.stat()
    return hashlib.sha256(f"{onnx.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]


@st.cache_resource(max_entries=4, show_spinner=False)
def model_bytes(path: str, model_id: str) -> bytes:
    """The model file the browser runs, read once per version (``model_id``) for every open live
    view of this server, not on each rerun."""
    return Path(path).read_bytes()


def live_section(folder: Path, top_k: int, key: str, explain: bool = True,
                 strictness: str | None = None) -> bytes | None:
    """The "Live camera" button and, once pressed, the camera view. Returns the PNG of a frame
    the visitor asked to explain (the latest one), else None. ``strictness`` picks which of the
    model's "None of these" thresholds the view applies (default: the model's normal one)."""
    opened = f"{key}_open"
    if not st.session_state.get(opened):
        st.caption("Classify what the camera sees, several times a second, on this device: no picture is sent.")
        if st.button("Live camera", key=f"{key}_start", icon=":material/videocam:", type="primary"):
            st.session_state[opened] = True
            st.rerun()
        return None
    if st.button("Close the live camera", key=f"{key}_stop", icon=":material/stop_circle:"):
        st.session_state[opened] = False
        st.session_state.pop(f"{key}_sent", None)  # a view opened later starts without the model
        st.rerun()
    try:
        require_runtime()
        with st.spinner("Preparing the model for your browser (the first time only) ..."):
            onnx, info = model_files(folder)
    except TransferError as error:
        st.error(str(error), icon=":material/error:")
        return None
    size_mb = onnx.stat().st_size / 2**20
    if size_mb > MAX_MODEL_MB:
        st.warning(f"This model is too large to run in the browser ({size_mb:.0f} MB; the limit is {MAX_MODEL_MB} MB): "
                   "use the Pictures or Webcam tab, or train a smaller backbone such as EfficientNet-Lite0.", icon=":material/memory:")
        return None
    info = {**info, "unsure_margin": unsure_margin_of(folder)}
    model_id = opaque_id(onnx)
    sent = f"{key}_sent"
    sending = st.session_state.get(sent) != model_id
    model = model_bytes(str(onnx), model_id) if sending else None
    value = _live_camera(model=model, info=browser_info(info, strictness=strictness), model_id=model_id,
                         top_k=top_k, explain=explain, autostart=True, key=f"{key}_view", default=None,
                         height=FRAME_HEIGHT)
    st.session_state[sent] = model_id
    if is_new_request(value, model_id, key) and not sending:
        st.session_state.pop(sent)  # the view was drawn anew and lost the model: send it on the next run
        st.rerun()
    if isinstance(value, (bytes, bytearray)) and len(value) > COUNTER_BYTES:
        return bytes(value[COUNTER_BYTES:])
    return None


def is_new_request(value, model_id: str, key: str) -> bool:
    """Whether the view asks for this model and that request was not answered yet. The view's value
    is either the explained frame (bytes) or such a request ({"model_id", "request"}, the latter a
    random id, so a request stays news until handled even though the value stays until the next)."""
    if not isinstance(value, dict) or value.get("model_id") != model_id:
        return False
    answered = f"{key}_answered"
    if st.session_state.get(answered) == value.get("request"):
        return False
    st.session_state[answered] = value.get("request")
    return True


def unsure_margin_of(folder) -> float | None:
    """The run's "not sure" margin (measured on its validation answers); a demo's snapshot keeps it in demo.json."""
    from pathlib import Path

    from transfer.analysis.trust import run_unsure_margin
    from transfer.core.files import read_json

    demo = read_json(Path(folder) / "demo.json", None)
    if isinstance(demo, dict):
        return demo.get("unsure_margin")
    return run_unsure_margin(folder).margin
