"""The page a demo link (``/?demo=TOKEN``) opens: one shared model, nothing else of the studio.

app.py routes here before any session, sidebar or password code runs, so a visitor gets no
session token, no navigation and nothing of the owner's workspace. The page shows the demo's
title, description, classes and validation accuracy, and predicts dropped or webcam pictures
with the Predict page's own functions (ui.predict_view), the model loaded once per process from
the demo's frozen snapshot (through its ONNX copy: the fast predictor). Every new picture is
counted against the demo's caps first. The live camera (ui.live_view) runs the demo's own ONNX
model in the visitor's browser; only a frame sent to "Explain this frame" is counted.
"""

from __future__ import annotations

import logging

import streamlit as st

from transfer.analysis.trust import Accuracy, UnsureMargin
from transfer.serving import demo_collect
from transfer.core.errors import TransferError
from transfer.data.images import IMAGE_EXTENSIONS, ImageError, check_pixel_count
from transfer.core.runs import RunDir
from transfer.serving.share import INVALID_LINK, DemoLimitReached, DemoStore, DemoUnavailable
from ui import live_view, predict_view, upload_guard

DEMO_PARAM = "demo"
DEMO_MAX_PIXELS = 16_000_000  # owners' pages take 64 MP; a stranger's picture costs the server at most 48 MB decoded
PICTURE_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
_ADMITTED = "demo_admitted_pictures"  # digests of this visitor's pictures already counted


def requested() -> bool:
    """Whether this visit is a demo link (the app then shows only the demo)."""
    return DEMO_PARAM in st.query_params


def render() -> None:
    """The demo page (a page function for ``st.navigation``)."""
    token = st.query_params.get(DEMO_PARAM, "")
    store = DemoStore()
    try:
        demo = store.open(token)
    except DemoUnavailable:
        show_invalid()
        return
    upload_guard.admit(upload_guard.DEMO)  # a valid link only: its pictures, within a demo's small budget
    introduction = st.empty()  # on screen while the model loads, taken back if it cannot load
    with introduction.container():
        st.title(demo.title)
        if demo.description:
            st.markdown(demo.description)
        show_facts(demo, predict_view.has_novelty(RunDir(demo.folder)))
    snapshot = RunDir(demo.folder)  # model.json, model.safetensors and model.onnx, as predict_view expects
    try:
        predict_view.predictor_for(snapshot)  # loaded (once per process) before the first picture arrives
    except (TransferError, OSError):  # revoked a moment ago, or damaged: never a path or a traceback
        logging.getLogger(__name__).exception("demo %s could not be loaded", demo.id)
        introduction.empty()
        show_invalid()
        return
    top_k, show_cam = options(len(demo.classes))
    if demo_collect.settings_of(demo):
        st.warning("The owner of this demo keeps the pictures you try here, to label them and improve the model. "
                   "Send only pictures you are happy to share.", icon=":material/inbox:")
    pictures_tab, webcam_tab, live_tab = st.tabs([":material/image: Pictures", ":material/photo_camera: Webcam", ":material/videocam: Live camera"])
    limit_mb = max(1, store.max_picture_bytes // 2**20)
    with pictures_tab:
        files = st.file_uploader("Drop pictures here", type=PICTURE_TYPES, accept_multiple_files=True,
                                 key="demo_pictures", max_upload_size=limit_mb,
                                 help=f"JPEG, PNG, GIF, BMP, WebP or TIFF, up to {limit_mb} MB each.")
        for index, upload in enumerate(files or []):
            show_picture(store, token, snapshot, upload.name, upload.getvalue(), top_k, show_cam, f"upload_{index}",
                         demo.strictness)
    with webcam_tab:
        photo = st.camera_input("Take a picture", key="demo_webcam")
        if photo is not None:
            show_picture(store, token, snapshot, "webcam picture", photo.getvalue(), top_k, show_cam, "webcam",
                         demo.strictness)
    with live_tab:  # classified in the visitor's browser: costs this server nothing per frame
        if predict_view.has_novelty(snapshot) and not demo.include_reference:
            st.caption("The live camera names classes only: \"None of these\" is judged on this server, for the "
                       "pictures you send and the frames you ask to explain.")
        frame = live_view.live_section(snapshot.path, top_k, "demo_live", strictness=demo.strictness)
        if frame is not None:  # "Explain this frame" counts as one picture tried
            show_picture(store, token, snapshot, "explained camera frame", frame, top_k, True, "live", demo.strictness)
    offer_download(demo)


def show_invalid() -> None:
    """The one answer for unknown, revoked and expired links alike."""
    st.title("Transfer Studio demo")
    st.error(INVALID_LINK, icon=":material/lock:")


def show_facts(demo, knows_strangers: bool = False) -> None:
    left, right = st.columns([3, 1])
    left.markdown("**Classes:** " + ", ".join(f"`{name}`" for name in demo.classes))
    left.caption("A picture that looks unlike all of these is answered \"None of these\"." if knows_strangers else
                 "The model always answers with one of these classes, even for a picture of something else.")
    if demo.val_total:  # a count, and how far a small validation set can be trusted
        accuracy = Accuracy(demo.val_correct or 0, demo.val_total)
        right.metric("Validation accuracy", accuracy.headline(),
                     help="Pictures the model had never trained on that it got right.")
        right.caption(accuracy.describe())
    else:
        share = demo.val_accuracy
        right.metric("Validation accuracy", f"{share:.1%}" if isinstance(share, (int, float)) else "–",
                     help="The share of pictures the model had never trained on that it got right.")


def options(classes: int) -> tuple[int, bool]:
    left, right = st.columns(2)
    top_k = left.slider("Classes to show", 1, classes, min(3, classes), key="demo_top_k")
    # The PyTorch model Grad-CAM needs is loaded only once a visitor turns this on (plain
    # predictions use the faster ONNX model); a model without a usable layer then says so per picture.
    show_cam = right.toggle("Show where the model looked (Grad-CAM)", key="demo_cam",
                            help="A heat map over the picture: the parts that raised the predicted class's score.")
    return top_k, show_cam


def show_picture(store: DemoStore, token: str, snapshot: RunDir, name: str, data: bytes, top_k: int, show_cam: bool,
                 key: str, strictness: str = "normal") -> None:
    try:  # before counting or decoding anything: a visitor's picture is smaller than an owner's
        check_pixel_count(data, DEMO_MAX_PIXELS)
    except ImageError as error:
        st.warning(f"{name}: this demo takes pictures up to {DEMO_MAX_PIXELS // 1_000_000} megapixels "
                   f"({error.detail}); send a smaller one.", icon=":material/photo_size_select_large:")
        return
    content = predict_view.digest(data)
    # Counted by content alone, as the server's work is cached: a new name or another number of
    # classes shown is neither counted nor computed again.
    if not admitted(store, token, name, content, len(data)):
        return
    with predict_view.DECODE_SLOTS:  # checking a picture to collect decodes it too
        demo_collect.keep_picture(store.open(token), data)
    result = predict_view.predict_picture(str(snapshot.path), predict_view.weights_version(snapshot), content, name,
                                          data, top_k, show_cam, strictness)
    demo = store.open(token)
    unsure = UnsureMargin(demo.unsure_margin, demo.unsure_how) if demo.unsure_margin is not None else None
    predict_view.render_picture(result, show_cam, key=key, unsure=unsure)


def admitted(store: DemoStore, token: str, name: str, content: str, size: int) -> bool:
    """Count a picture this visitor has not sent before; a rerun of the page (any click) counts nothing."""
    seen = st.session_state.setdefault(_ADMITTED, set())
    if content in seen:
        return True
    try:
        store.admit_picture(token, size)
    except DemoLimitReached as limit:
        st.warning(f"{name}: {limit}", icon=":material/hourglass_empty:")
        return False
    except DemoUnavailable:  # revoked or expired while the page was open
        st.error(INVALID_LINK, icon=":material/lock:")
        st.stop()
    seen.add(content)
    return True


def offer_download(demo) -> None:
    bundle = demo.bundle_path if demo.allow_download else None
    if bundle is None:
        return
    st.divider()
    # Read only when the visitor clicks, not on every rerun of the page.
    st.download_button("Download the model (bundle zip)", lambda: bundle.read_bytes(), file_name=f"{bundle_name(demo)}.zip",
                       mime="application/zip", icon=":material/download:", on_click="ignore", key="demo_bundle",
                       help="The model with a predict.py that runs without this studio.")


def bundle_name(demo) -> str:
    words = "".join(ch if ch.isalnum() else "-" for ch in demo.title.lower()).strip("-")
    return "-".join(part for part in words.split("-") if part)[:60] or "model"
