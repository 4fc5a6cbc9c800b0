"""Download a finished run's model from the Evaluate and Predict pages: the bundle, ONNX,
TorchScript and the web page, each with its size, and the smaller (int8) model with its check's
figures. An export is made once per weights file by a child process
(transfer.serving.export.export_in_subprocess, behind a spinner) and kept in the run folder, so the
next visit offers the download at once; an export that is refused says why."""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.serving.export import (INT8_FORMATS, ExportError, cached_export, export_in_subprocess, keep_float32,
                                     keeps_float32)
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
    smaller_model_section(run, key)


def smaller_model_section(run, key: str) -> None:
    """The "smaller model" choice: the int8 model, made on demand, with its size and its check
    against float32; once it passed, the owner may keep float32 for predictions and demos."""
    st.markdown("**Smaller model (int8)**: about a third of the size, and faster on the computer that answers "
                "(this studio's server, the bundle's predict.py); offered only when it answers like the full model "
                "on the validation pictures.")
    try:
        smaller = cached_export(run.path, "onnx", "int8")
    except ExportError as error:
        st.warning(str(error), icon=":material/compress:")
        return
    except TransferError as error:
        st.info(str(error))
        return
    if smaller is None:
        _offer(run, "onnx", "the smaller model", "application/octet-stream", f"{key}_int8", precision="int8")
        return
    st.caption(smaller.int8_check().summary() + ".")
    for format, label, _, mime in CHOICES:
        if format in INT8_FORMATS:
            _offer(run, format, f"{label}, int8", mime, f"{key}_int8", precision="int8")
    keep = st.checkbox("Keep float32 for predictions and demo links", value=keeps_float32(run.path),
                       key=f"{key}_keep_float32",
                       help="Without this, the studio answers with the smaller model where it passed its check.")
    if keep != keeps_float32(run.path):
        keep_float32(run.path, keep)


def _offer(run, format: str, label: str, mime: str, key: str, precision: str = "float32") -> None:
    button_key = f"{key}_{format}"
    try:
        result = cached_export(run.path, format, precision)
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
                export_in_subprocess(run.path, format, precision=precision)
            except TransferError as error:
                st.error(f"{label}: {error}", icon=":material/error:")
                return
        st.rerun()  # the export is kept in the run folder: the next run offers only its download
    path = result.path
    text = "Download as a web page" if format == "web" else f"Download {label}"
    st.download_button(f"{text} ({human_size(result.bytes)})", lambda: path.read_bytes(),
                       file_name=path.name if format != "bundle" else f"{file_stem(run_name(run))}{_suffix(precision)}.zip",
                       mime=mime, icon=":material/download:",
                       on_click="ignore", key=f"{button_key}_download",
                       help=f"largest difference from the {'float32 model' if result.check else 'studio'}: "
                            f"{result.max_abs_diff:.1e} ({result.checked_on} {result.check_inputs})")


def _suffix(precision: str) -> str:
    return "" if precision == "float32" else f"-{precision}"
