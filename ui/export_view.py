"""Download a finished run's model from the Evaluate and Predict pages: the bundle, ONNX,
TorchScript and the web page, each with its size. An export is made once per weights file by a child process
(transfer.serving.export.export_in_subprocess, behind a spinner) and kept in the run folder, so the
next visit offers the download at once; an export that is refused says why."""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.serving.export import ExportError, cached_export, export_in_subprocess
from transfer.core.quota import human_size
from transfer.models.run_names import file_stem, run_name

#: (format, button label, what it is for, mime type)
CHOICES = (
    ("bundle", "Bundle (zip)", "ONNX model, weights, model card and a predict.py that needs only onnxruntime, "
                               "numpy and pillow", "application/zip"),
    ("onnx", "ONNX", "for onnxruntime, OpenVINO, TensorRT and other runtimes; returns class probabilities",
     "application/octet-stream"),
    ("torchscript", "TorchScript", "for PyTorch and LibTorch (C++) without this studio's code",
     "application/octet-stream"),
    ("web", "web page (zip)", "a folder with index.html that runs the model in any browser (pictures and live "
                              "camera, nothing sent anywhere); put it on any static web host", "application/zip"),
)


def download_section(run, key: str) -> None:
    """The "Download the model" block for a finished run (``run`` is a transfer.core.runs.RunDir)."""
    st.subheader("Download the model")
    st.caption("Each file is checked against the studio's model on the run's validation pictures before it is "
               "offered: its probabilities differ by at most 0.0001.")
    for format, label, purpose, mime in CHOICES:
        left, right = st.columns([2, 3])
        with left:
            _offer(run, format, label, mime, key)
        right.caption(purpose)


def _offer(run, format: str, label: str, mime: str, key: str) -> None:
    button_key = f"{key}_{format}"
    try:
        result = cached_export(run.path, format)
    except ExportError as error:
        st.error(f"{label}: {error}", icon=":material/error:")
        return
    except TransferError as error:
        st.info(str(error))
        return
    if result is None:
        if not st.button(f"Prepare {label}", key=f"{button_key}_prepare", icon=":material/inventory_2:"):
            return
        with st.spinner(f"Exporting and checking {label} ..."):
            try:
                export_in_subprocess(run.path, format)
            except TransferError as error:
                st.error(f"{label}: {error}", icon=":material/error:")
                return
        st.rerun()  # the export is kept in the run folder: the next run offers only its download
    path = result.path
    text = "Download as a web page" if format == "web" else f"Download {label}"
    st.download_button(f"{text} ({human_size(result.bytes)})", lambda: path.read_bytes(),
                       file_name=path.name if format != "bundle" else f"{file_stem(run_name(run))}.zip", mime=mime, icon=":material/download:",
                       on_click="ignore", key=f"{button_key}_download",
                       help=f"largest difference from the studio: {result.max_abs_diff:.1e} "
                            f"({result.checked_on} {result.check_inputs})")
