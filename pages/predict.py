"""Predict: try a finished run's model on new pictures.

Drop one or many pictures (every format the data layer reads), take one with the webcam, watch
the live camera classified in the browser (ui.live_view), or give a zip of pictures for a table
and a CSV. The model is loaded with the first picture, once per
server process (see ui.predict_view); each picture's answer is cached, so clicking around re-predicts nothing.
"""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.data.images import IMAGE_EXTENSIONS
from ui import export_view, label_view, live_view, predict_view, share_view

MAX_PICTURE_MB = 50  # a large camera photo is 10 to 25 MB
MAX_ZIP_MB = 500

PICTURE_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)

st.title("Predict")
st.caption("Drop pictures on the page and see which class the model picks, how sure it is, and where it looked.")


def cam_sentence(run) -> tuple[bool, str]:
    """Whether the run's model has a layer for Grad-CAM (asked of the explainer child: no torch here)."""
    from transfer.serving.explainer import shared_explainer

    try:
        return shared_explainer().layer(run.path)
    except TransferError as error:
        return False, str(error)


def loaded_predictor(run):
    """The run's model, loaded on the first picture: opening the page loads nothing (no torch)."""
    try:
        return predict_view.predictor_for(run)
    except TransferError as error:
        st.error(str(error))
        st.stop()


def show_pictures(run, uploads: list[tuple[str, bytes]], top_k: int, show_cam: bool, key: str,
                  strictness: str = "normal") -> None:
    predictor = loaded_predictor(run)
    if show_cam:
        show_cam, cam_note = cam_sentence(run)
        if not show_cam:
            st.caption(f"No heat map for this model: {cam_note}")
    version = predict_view.weights_version(run)
    classes = predictor.labels + label_view.known_classes()
    for index, (name, data) in enumerate(uploads):
        result = predict_view.predict_picture(str(run.path), version, predict_view.digest(data), name, data, top_k,
                                              show_cam, strictness)
        predict_view.render_picture(result, show_cam, key=f"{key}_{index}",
                                    unsure=predict_view.unsure_margin(str(run.path), version))
        if result.prediction:
            label_view.prediction_corrections(data, name if key != "webcam" else "webcam.jpg",
                                              result.prediction["label"], classes, f"correct_{key}_{index}",
                                              origin=f"the Predict page ({key})")


def show_zip(run, name: str, data: bytes, top_k: int, strictness: str = "normal") -> None:
    loaded_predictor(run)
    result, error = predict_view.predict_zip(str(run.path), predict_view.weights_version(run),
                                             predict_view.digest(data), data, top_k, strictness)
    if error:
        st.error(error, icon=":material/error:")
        return
    predicted, skipped = len(result.rows), len(result.skipped)
    if not predicted:
        st.warning(f"{name} holds no picture that could be read ({skipped} files skipped).")
    else:
        unknown = sum(1 for row in result.rows if row.get("unknown"))
        st.success(f"{predicted} pictures predicted" + (f", {skipped} files skipped (see the last column)."
                                                         if skipped else ".")
                   + (f" {unknown} look unlike every class: None of these." if unknown else ""))
    # Skipped files have no probability: None (an empty cell) keeps the column numeric.
    rows = [{"answer": predict_view.answer_column(row), **row,
             "probability": None if row["probability"] == "" else row["probability"],
             "novelty": None if row["novelty"] == "" else row["novelty"]}
            for row in result.table_rows()]
    st.dataframe(rows, hide_index=True, width="stretch", key="zip_table",
                 column_config={"probability": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                               format="percent")})
    zip_corrections(run, data, result)
    stem = name.rsplit(".", 1)[0] or "pictures"
    st.download_button("Download the predictions (CSV)", result.csv_bytes(), file_name=f"predictions-{stem}.csv",
                       mime="text/csv", icon=":material/download:", on_click="ignore", key="zip_csv")


def zip_corrections(run, data: bytes, result) -> None:
    """Correct one row of the table at a time: the picture is read back from the zip."""
    import zipfile
    from io import BytesIO

    rows = {row["file"]: row["label"] for row in result.rows}
    if not rows:
        return
    with st.expander("Correct an answer: the picture joins your data set"):
        picked = st.selectbox("Picture", list(rows), key="zip_correct_file")
        inner = picked.split("/", 1)[1] if "/" in picked else picked
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                picture = archive.read(inner)
        except (KeyError, zipfile.BadZipFile, OSError):
            st.caption(f"{picked} cannot be read back from the zip.")
            return
        st.image(picture, width=160)
        classes = loaded_predictor(run).labels + label_view.known_classes()
        label_view.prediction_corrections(picture, inner.rsplit("/", 1)[-1], rows[picked], classes,
                                          f"correct_zip_{predict_view.digest(picture)[:12]}",
                                          origin="the Predict page (zip)")


run = predict_view.choose_finished_run("predict_run")
if run is not None:
    classes = len(run.labels() or loaded_predictor(run).labels)
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
            show_pictures(run, [(f.name, f.getvalue()) for f in files], top_k, show_cam, "upload", strictness)
    with webcam_tab:
        photo = st.camera_input("Take a picture", key="webcam")
        if photo is not None:
            show_pictures(run, [("webcam picture", photo.getvalue())], top_k, show_cam, "webcam", strictness)
    with live_tab:
        frame = live_view.live_section(run.path, top_k, "predict_live", strictness=strictness)
        if frame is not None:  # "Explain this frame": that one frame, with the heat map
            show_pictures(run, [("explained camera frame", frame)], top_k, True, "live", strictness)
    with zip_tab:
        archive = st.file_uploader("Drop a zip of pictures", type=["zip"], key="zip", max_upload_size=MAX_ZIP_MB,
                                   help="Folders inside the zip are fine; files that are not pictures "
                                        "are listed as skipped.")
        if archive is not None:
            show_zip(run, archive.name, archive.getvalue(), top_k, strictness)
    export_view.download_section(run, "predict_export")
    share_view.render(run)
