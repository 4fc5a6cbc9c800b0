"""The Predict page's answers: for dropped pictures (or a webcam or camera frame) each
picture with its classes, certainty and heat map, and for a zip of pictures a table and a CSV;
every answer can be corrected, which adds the picture to the session's data set.

The model is loaded with the first picture, once per server process (ui.predict_view); each
picture's answer is cached, so clicking around re-predicts nothing.
"""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from ui import label_view, predict_view

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
