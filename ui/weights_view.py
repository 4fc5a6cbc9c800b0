"""Configure: "Start from my own weights": an uploaded file or one of this session's finished runs.

The chosen weights are kept in the session's runs folder (``transfer.models.weights.weights_store``,
inside the workspace and so inside its disk quota) and go into the draft settings as
``initial_weights``, which the Train page hands to the run. The report (what loads, what is
missing, what has another shape) is computed by ``transfer weights`` in its own process, so
the web server never reads a large file into memory or builds a model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import streamlit as st

from transfer.models import weights
from transfer.core.child import run_child_job
from transfer.core.errors import TransferError
from transfer.core.quota import DiskQuota
from transfer.core.runs import FINISHED, list_runs
from transfer.models.run_names import distinct_labels, run_name
from ui import session

SOURCE_KEY = "weights_source"
_SOURCES = {
    "catalogue": "The catalogue's pretrained weights",
    "upload": "Upload a weights file",
    "run": "A finished run of this session",
}
_FROM_SPEC = {"file": "upload", "run": "run"}
REPORT_TIMEOUT_S = 300


def wants_own_weights(draft: dict) -> bool:
    """Whether this session starts from its own weights (then any architecture can be picked,
    even one whose catalogue weights are not on this machine)."""
    chosen = st.session_state.get(SOURCE_KEY)
    if chosen is None:
        chosen = _FROM_SPEC.get((draft.get("initial_weights") or {}).get("source"), "catalogue")
    return chosen != "catalogue"


def initial_weights_section(backbone: str, method: str, num_classes: int, draft: dict) -> dict | None:
    """The section itself; returns the ``initial_weights`` setting, or None for the catalogue's weights."""
    current = draft.get("initial_weights") if draft.get("backbone") == backbone else None
    with st.expander("Start from my own weights", expanded=wants_own_weights(draft)):
        st.caption("Transfer from a network trained on your own kind of pictures (scans, satellite images, "
                   "a previous run): its weights replace the catalogue's. Files are read as plain tensors "
                   "(.safetensors, or .pt / .pth without any Python objects); nothing in them is ever run.")
        options = list(_SOURCES)
        default = _FROM_SPEC.get((current or {}).get("source"), "catalogue")
        source = st.radio("Starting weights", options, index=options.index(default), format_func=_SOURCES.get,
                          key=SOURCE_KEY, horizontal=True)
        if source == "catalogue":
            return None
        if method == "scratch":
            st.info("Training from scratch starts from random weights; your weights apply to feature transfer "
                    "and fine-tuning.")
            return None
        spec = _uploaded_weights(current) if source == "upload" else _run_weights(backbone, current)
        if spec is None:
            st.caption("Until weights are chosen, training starts from the catalogue's weights.")
            return None
        return spec if _show_report(spec, backbone, num_classes, draft) else None


def _uploaded_weights(current: dict | None) -> dict | None:
    limit_mb = weights.max_upload_bytes() / 1e6
    uploaded = st.file_uploader("Weights file", type=[s.lstrip(".") for s in weights.WEIGHTS_SUFFIXES],
                                key="weights_file", help=f"Up to {limit_mb:.0f} MB; stored in this session's folder.")
    if uploaded is None:
        if current and current.get("source") == "file" and Path(current["path"]).is_file():
            st.caption(f"Using **{current['name']}**, uploaded before.")
            return current
        return None
    upload_id = getattr(uploaded, "file_id", None) or f"{uploaded.name}:{uploaded.size}"
    kept = st.session_state.get("weights_uploaded")
    if kept and kept[0] == upload_id:
        return kept[1]
    try:
        weights.check_upload(uploaded.name, uploaded.size)
        DiskQuota.for_session(session.workspace()).check(uploaded.size)
        spec = weights.store_bytes(uploaded.getvalue(), uploaded.name, session.runs_dir()).to_dict()
    except TransferError as error:
        st.error(str(error))
        return None
    except OSError as error:
        st.error(f"{uploaded.name} could not be saved ({error.strerror}); free some disk space and try again.")
        return None
    st.session_state["weights_uploaded"] = (upload_id, spec)
    return spec


def _run_weights(backbone: str, current: dict | None) -> dict | None:
    runs = [run for run in list_runs(session.runs_dir())
            if run.state == FINISHED and run.config.get("backbone") == backbone and run.weights_path.is_file()]
    if not runs:
        st.caption(f"No finished run of this session was trained from {backbone} yet.")
        return None
    labels = distinct_labels(runs, _run_label)
    ids = list(labels)
    wanted = (current or {}).get("run")
    picked = st.selectbox("Run to start from", ids, index=ids.index(wanted) if wanted in ids else 0,
                          format_func=labels.get, key="weights_run")
    kept = st.session_state.get("weights_chained")
    if kept and kept[0] == picked:
        return kept[1]
    run = runs[ids.index(picked)]
    try:
        spec = weights.store_file(run.weights_path, session.runs_dir(), name=f"{run.id}/{run.weights_path.name}",
                                  origin="run", run=run.id).to_dict()
    except OSError as error:
        st.error(f"The run's weights could not be kept ({error.strerror}); free some disk space and try again.")
        return None
    st.session_state["weights_chained"] = (picked, spec)
    return spec


def _run_label(run) -> str:
    best = run.status().get("best_val_accuracy")
    accuracy = f"{best:.1%}" if isinstance(best, (int, float)) else "–"
    return f"{run_name(run)} · best {accuracy}"


def _show_report(spec: dict, backbone: str, num_classes: int, draft: dict) -> bool:
    """Show what loads into ``backbone``; False when the weights cannot be used."""
    result = weights_report(spec["path"], spec["sha256"], backbone, num_classes,
                            float(draft.get("dropout") or 0.0), draft.get("hidden"))
    if "error" in result:
        st.error(result["error"])
        st.caption("Training starts from the catalogue's weights until you choose weights that fit.")
        return False
    report = result["report"]
    lines = report["text"].splitlines()
    text = f"**{spec['name']}** (SHA-256 `{spec['sha256'][:16]}…`) into **{backbone}**:\n\n" + \
        "\n".join(f"- {line}" for line in lines)
    (st.success if not (report["missing"] or report["mismatched"]) else st.warning)(text)
    return True


@st.cache_data(show_spinner="Checking the weights against the backbone ...", max_entries=32)
def weights_report(path: str, sha256: str, backbone: str, num_classes: int, dropout: float,
                   hidden: int | None) -> dict:
    """``{"report": ...}`` or ``{"error": sentence}`` from the ``weights`` child job (``transfer weights
    --json``'s answer) in its own process (``sha256`` keys the cache: a stored file never changes under its name)."""
    settings = {"source": path, "backbone": backbone, "classes": int(num_classes), "dropout": float(dropout),
                "hidden": int(hidden) if hidden else None}
    try:
        done = run_child_job("weights", settings, timeout=REPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"Checking the weights took longer than {REPORT_TIMEOUT_S} s; try a smaller file."}
    result = done.answer
    if done.returncode != 0 or "report" not in result:
        return {"error": result.get("error") or "The weights could not be checked; try another file."}
    return result
