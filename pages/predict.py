"""Predict: try a finished run's model on new pictures.

Drop one or many pictures (every format the data layer reads), take one with the webcam, watch
the live camera classified in the browser (ui.live_view), or give a zip of pictures for a table
and a CSV (ui.answers_view). The model is loaded with the first picture, once per server process
(see ui.predict_view); each picture's answer is cached, so clicking around re-predicts nothing.
"""

from __future__ import annotations

import streamlit as st

from transfer.data.images import IMAGE_EXTENSIONS
from ui import answers_view, export_view, live_view, predict_view, run_picker, share_view

MAX_PICTURE_MB = 50  # a large camera photo is 10 to 25 MB
MAX_ZIP_MB = 500

PICTURE_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)

st.title("Predict")
st.caption("Drop pictures on the page and see which class the model picks, how sure it is, and where it looked.")

run = run_picker.choose_finished_run("predict_run")
if run is not None:
    classes = len(run.labels() or answers_view.loaded_predictor(run).labels)
    left, right = st.columns(2)
    top_k = left.slider("Classes to show", 1, classes, min(3, classes), key="top_k")
    show_cam = right.toggle("Show where the model looked (Grad-CAM)", key="show_cam",
                            help="A heat map over the picture: the parts that raised the predicted class's score.")
    strictness = predict_view.strictness_control(run, "strictness")

    pictures_tab, webcam_tab, live_tab, zip_tab = st.tabs([":material/image: Pictures", ":material/photo_camera: Webcam", ":material/videocam: Live camera",
                                                            ":material/folder_zip: Zip of pictures"])
    with pictures_tab:
        files = st.file_uploader("Drop pictures here", type=PICTURE_TYPES, accept_multiple_files=True,
                                 key="pictures", max_upload_size=MAX_PICTURE_MB,
                                 help=f"JPEG, PNG, GIF, BMP, WebP or TIFF, up to {MAX_PICTURE_MB} MB each; "
                                      "as many as you like.")
        if files:
            answers_view.show_pictures(run, [(f.name, f.getvalue()) for f in files], top_k, show_cam, "upload", strictness)
    with webcam_tab:
        photo = st.camera_input("Take a picture", key="webcam")
        if photo is not None:
            answers_view.show_pictures(run, [("webcam picture", photo.getvalue())], top_k, show_cam, "webcam", strictness)
    with live_tab:
        frame = live_view.live_section(run.path, top_k, "predict_live", strictness=strictness)
        if frame is not None:  # "Explain this frame": that one frame, with the heat map
            answers_view.show_pictures(run, [("explained camera frame", frame)], top_k, True, "live", strictness)
    with zip_tab:
        archive = st.file_uploader("Drop a zip of pictures", type=["zip"], key="zip", max_upload_size=MAX_ZIP_MB,
                                   help="Folders inside the zip are fine; files that are not pictures "
                                        "are listed as skipped.")
        if archive is not None:
            answers_view.show_zip(run, archive.name, archive.getvalue(), top_k, strictness)
    export_view.download_section(run, "predict_export")
    share_view.render(run)
