"""Check the labels (Data page) and the feature maps (Data and Evaluate pages).

The audit and the maps run as jobs of the session, through the machine's queue, in a worker
(``transfer.analysis.audit.audit_job``: the workers' CPU priority and thread cap), which writes
``progress.json`` and then ``result.json`` (or ``error.json``) into a folder; this module queues
it, shows its progress and draws what it found. Fixes go to the session's working copy of the
data set (:class:`transfer.data.working_copy.WorkingCopy`), never to the user's own files.
"""

from __future__ import annotations

import time
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from transfer.analysis.audit import ERROR_FILE, PROGRESS_FILE, RESULT_FILE, RUN_MAP_FOLDER
from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_json, read_json
from transfer.data.working_copy import ADD, MOVE, REMOVE, WorkingCopy
from ui import data_view, session

JOB_FILE = "job.json"
GALLERY_LIMIT = 12
GALLERY_COLUMNS = 4
THUMBNAIL = 120
_PHASES = {"features": "Computing features", "heads": "Judging every picture with heads that never saw it",
           "map": "Drawing the map"}
_KINDS = {"leakage": "in training and validation (leakage)", "label_conflict": "under two classes",
          "within_class": "twice in one class"}
_PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
            "#EECA3B"]


# --------------------------------------------------------------------------- jobs in their own process


def start_job(folder: Path, arguments: list[str], *, job: str = "audit", **details) -> None:
    """Queue an ``audit`` job (``python -m transfer.analysis.audit ARGUMENTS``) or a ``suggest`` job
    (``transfer.analysis.suggest``), writing into ``folder`` (cleared first), as a job of this
    session: a worker runs it when the machine's queue lets it, like training."""
    from ui import jobs_view

    folder.mkdir(parents=True, exist_ok=True)
    for name in (RESULT_FILE, ERROR_FILE, PROGRESS_FILE, JOB_FILE):
        (folder / name).unlink(missing_ok=True)
    try:
        run = jobs_view.session_jobs_manager().submit({"job": job, "arguments": arguments})
    except TransferError as error:  # the session's helper jobs are full: say so where the result goes
        atomic_write_json(folder / ERROR_FILE, {"error": str(error)})
        return
    atomic_write_json(folder / JOB_FILE, {**details, "run": str(run.path), "started": time.time()})


def job_state(folder: Path) -> str:
    """``idle`` (never started), ``running`` (or waiting in the queue), ``done``, ``failed`` or
    ``stopped`` (its worker died, or it ended without a word)."""
    from transfer.runtime.jobs import worker_alive
    from transfer.core.runs import ACTIVE_STATES, RunDir

    if (folder / RESULT_FILE).is_file():
        return "done"
    if (folder / ERROR_FILE).is_file():
        return "failed"
    job = read_json(folder / JOB_FILE, None)
    if not isinstance(job, dict) or not job.get("run"):
        return "idle"
    run = RunDir(job["run"])
    if run.exists() and run.state in ACTIVE_STATES and worker_alive(run):
        return "running"
    return "stopped"


@st.fragment(run_every=1.0)
def job_progress(folder: str) -> None:
    """A progress bar that follows the job and reruns the page once it has ended."""
    folder_path = Path(folder)
    if job_state(folder_path) != "running":
        st.rerun()
    progress = read_json(folder_path / PROGRESS_FILE, None) or {}
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    phase = _PHASES.get(progress.get("phase"), "Waiting for the machine, then starting")
    text = f"{phase}: {done}/{total}" if total else f"{phase} ..."
    st.progress(min(1.0, done / total) if total else 0.0, text=text)


def job_outcome(folder: Path, start_label: str, start) -> dict | None:
    """The job's result when done; otherwise its progress, error or a button that starts it."""
    state = job_state(folder)
    if state == "running":
        job_progress(str(folder))
        return None
    if state == "failed":
        st.error((read_json(folder / ERROR_FILE, None) or {}).get("error", "The check stopped unexpectedly."))
    elif state == "stopped":
        st.warning("The last check stopped before it finished; start it again.")
    if state == "done":
        return read_json(folder / RESULT_FILE, None)
    st.button(start_label, on_click=start, type="primary", icon=":material/search:", key=f"start:{folder.name}")
    return None


# --------------------------------------------------------------------------- the feature map


def feature_map_figure(points: list[dict], *, marked: str | None = None, marked_title: str = "") -> go.Figure:
    """One point per picture coloured by class; ``marked`` names a boolean key drawn as a ring
    (suspects) or, for ``correct``, right answers as dots and wrong ones as crosses."""
    figure = go.Figure()
    classes = sorted({p["label"] for p in points})
    for index, name in enumerate(classes):
        group = [p for p in points if p["label"] == name]
        symbols = ["circle" if p.get("correct", True) else "x" for p in group]
        hover = [f"{Path(p['path']).name}<br>class: {p['label']}"
                 + (f"<br>said: {p['predicted']}" if "predicted" in p else "") for p in group]
        figure.add_scatter(x=[p["x"] for p in group], y=[p["y"] for p in group], mode="markers", name=name,
                           text=hover, hoverinfo="text",
                           marker=dict(color=_PALETTE[index % len(_PALETTE)], size=8, symbol=symbols, opacity=0.8))
    if marked and marked != "correct":
        ringed = [p for p in points if p.get(marked)]
        if ringed:
            figure.add_scatter(x=[p["x"] for p in ringed], y=[p["y"] for p in ringed], mode="markers",
                               name=marked_title, hoverinfo="skip",
                               marker=dict(size=16, symbol="circle-open", color="black", line=dict(width=2)))
    figure.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.08),
                         xaxis=dict(visible=False), yaxis=dict(visible=False))
    return figure


def run_feature_map_section(run) -> None:
    """Evaluate page: the run's validation pictures on a map, right and wrong answers marked."""
    st.subheader("Feature map")
    st.caption("Each validation picture placed by what the backbone sees in it (t-SNE): pictures that look alike "
               "to the network lie close. Dots are right answers, crosses wrong ones.")
    folder = Path(run.path) / RUN_MAP_FOLDER
    result = job_outcome(folder, "Draw the feature map", lambda: start_job(folder, ["run-map", str(run.path)]))
    if result:
        st.plotly_chart(feature_map_figure(result["points"], marked="correct"), key="run_feature_map")


# --------------------------------------------------------------------------- check the labels


def audit_folder() -> Path:
    return session.workspace() / "audit"


def working_copy() -> WorkingCopy:
    return WorkingCopy(audit_folder() / "working_copy")


def start_audit(choice: dict) -> None:
    start_job(audit_folder() / "job", ["dataset", str(choice["source"]), str(audit_folder() / "job"),
                                       "--val-fraction", str(choice["val_fraction"]),
                                       "--split-seed", str(choice["seed"])], source=str(choice["source"]))


def check_labels_section(choice: dict, report) -> None:
    """Data page: run the audit, then fix what it points at in the session's working copy."""
    st.subheader("Check the labels")
    st.caption("Every picture is judged by a model that never saw its label (from the cached features, in "
               "seconds once they are computed): likely mistakes, copies of one scene and pictures unlike the rest. "
               "Fixes change this session's working copy only; your own files stay as they are.")
    copy = working_copy()
    for kind, text in st.session_state.pop("audit_notices", []):
        (st.error if kind == "error" else st.success)(text)
    if report.dataset is None:
        if copy.edits and str(choice["source"]) == str(copy.data):
            show_changes(copy)  # labelled pictures of a data set still too small to check
        return
    folder = audit_folder() / "job"
    job = read_json(folder / JOB_FILE, None) or {}
    if job and not _same_data(job.get("source"), choice["source"], copy):
        for name in (RESULT_FILE, ERROR_FILE, JOB_FILE):  # an audit of another data set
            (folder / name).unlink(missing_ok=True)
    result = job_outcome(folder, "Check the labels", lambda: start_audit(choice))
    if result:
        st.button("Check again", on_click=start_audit, args=(choice,), icon=":material/refresh:", key="audit_again")
        show_findings(result, choice, report, copy)
    if copy.edits and str(choice["source"]) == str(copy.data):
        show_changes(copy)
    elif copy.edits and str(choice["source"]) == copy.original:
        st.info(f"Your {len(copy.edits)} earlier fix(es) to this data set are kept in a corrected copy.")
        st.button("Use the corrected copy", on_click=session.choose_dataset, args=(copy.data, choice["name"]),
                  kwargs={"val_fraction": float(choice["val_fraction"]), "seed": int(choice["seed"])},
                  key="use_corrected_copy")


def _same_data(audited: str | None, chosen: str, copy: WorkingCopy) -> bool:
    return audited == chosen or (audited is not None and copy.serves(audited) and copy.serves(chosen))


def show_findings(result: dict, choice: dict, report, copy: WorkingCopy) -> None:
    corrected = str(choice["source"]) == str(copy.data)
    decided = copy.decided() if corrected else set()
    root = Path(copy.data if corrected else result["root"])
    classes = list(report.dataset.classes)
    suspects = [s for s in result["suspects"] if s["path"] not in decided]
    pairs = [d for d in result["near_duplicates"] if d["a"] not in decided and d["b"] not in decided]
    outliers = [o for o in result["outliers"] if o["path"] not in decided]
    st.caption(f"{result['pictures']} pictures checked in {result['seconds']:.1f} s "
               f"({result['features_cached']} features from the cache).")
    tabs = st.tabs([f"Likely mistakes ({len(suspects)})", f"Near-duplicates ({len(pairs)})",
                    f"Outliers ({len(outliers)})", "Feature map"])
    context = {"choice": choice, "report": report, "classes": classes, "root": root}
    with tabs[0]:
        if not suspects:
            st.success("No picture looks filed under the wrong class.")
        _gallery(suspects, context, "suspect", lambda s: f"filed as **{s['given']}**, looks like "
                 f"**{s['suggested']}** ({s['score']:.0%})")
    with tabs[1]:
        if not pairs:
            st.success("No two pictures show the same scene.")
        for index, pair in enumerate(pairs[:GALLERY_LIMIT]):
            _pair_card(pair, index, context)
    with tabs[2]:
        if not outliers:
            st.success("No picture is far from every class.")
        _gallery(outliers, context, "outlier", lambda o: f"in **{o['given']}**, unlike its class "
                 f"(score {o['score']:.1f})")
    with tabs[3]:
        if result.get("map"):
            st.plotly_chart(feature_map_figure(result["map"], marked="suspect", marked_title="likely mistakes"),
                            key="data_feature_map")
            st.caption("Each picture placed by what the backbone sees in it (t-SNE); ringed: likely mistakes.")


def _gallery(items: list[dict], context: dict, kind: str, describe) -> None:
    shown = items[:GALLERY_LIMIT]
    for start in range(0, len(shown), GALLERY_COLUMNS):
        for column, item in zip(st.columns(GALLERY_COLUMNS), shown[start:start + GALLERY_COLUMNS]):
            with column.container(border=True):
                _picture(context["root"], item["path"])
                st.markdown(describe(item))
                _actions(item["path"], item["given"], item.get("suggested"), item.get("sha256", ""), context,
                         f"{kind}:{item['path']}")
    if len(items) > GALLERY_LIMIT:
        st.caption(f"The first {GALLERY_LIMIT} of {len(items)}, most certain first; fixed ones make room for more.")


def _pair_card(pair: dict, index: int, context: dict) -> None:
    with st.container(border=True):
        st.markdown(f"{pair['similarity']:.0%} alike, {_KINDS.get(pair['kind'], pair['kind'])}"
                    + (" (identical files)" if pair.get("identical") else ""))
        for column, path, label in zip(st.columns(2), (pair["a"], pair["b"]), pair["classes"]):
            with column:
                _picture(context["root"], path)
                st.caption(f"class: {label}")
                st.button("Remove this one", key=f"pair:{index}:{path}", on_click=_apply,
                          args=(REMOVE, path, label, None, "", context), icon=":material/delete:")
        st.button("Keep both", key=f"pair:{index}:keep", on_click=_keep_pair, args=(pair, context))


def _picture(root: Path, relative: str) -> None:
    path = root / relative
    array = data_view.thumbnail_array(str(path), str(path.stat().st_mtime_ns) if path.exists() else "gone",
                                      THUMBNAIL)
    if array is None:
        st.caption(f"({relative} cannot be shown)")
    else:
        st.image(array, width=THUMBNAIL)
    st.caption(relative)


def _actions(path: str, given: str, suggested: str | None, sha256: str, context: dict, key: str) -> None:
    if suggested:
        st.button(f"Move to {suggested}", key=f"{key}:suggested", type="primary", width="stretch",
                  on_click=_apply, args=(MOVE, path, given, suggested, sha256, context))
    others = [c for c in context["classes"] if c != given]
    st.selectbox("Another class", others, key=f"{key}:other", label_visibility="collapsed")
    # One button per line: a gallery column is too narrow for three side by side.
    st.button("Move to the class above", key=f"{key}:move", on_click=_apply, width="stretch",
              args=(MOVE, path, given, None, sha256, context), kwargs={"choose_from": f"{key}:other"})
    st.button("Remove", key=f"{key}:remove", on_click=_apply, width="stretch",
              args=(REMOVE, path, given, None, sha256, context))
    st.button("Keep as is", key=f"{key}:keep", on_click=_apply, width="stretch",
              args=("keep", path, given, None, sha256, context), help="The label is right")


def _working_copy_for(context: dict) -> WorkingCopy:
    """The session's working copy of the chosen data set, made (and chosen) on the first fix."""
    copy, choice = working_copy(), context["choice"]
    if str(choice["source"]) != str(copy.data):  # the original chosen again: start a fresh copy of it
        copy.materialise(context["report"].dataset, choice["source"])
    if str(choice["source"]) != str(copy.data):
        session.choose_dataset(copy.data, choice["name"], val_fraction=float(choice["val_fraction"]),
                               seed=int(choice["seed"]))
    return copy


def _apply(action: str, path: str, label: str, new_label: str | None, sha256: str, context: dict,
           choose_from: str | None = None) -> None:
    if choose_from:
        new_label = st.session_state.get(choose_from)
    try:
        copy = _working_copy_for(context)
        if action == MOVE:
            copy.move(path, new_label, label=label, sha256=sha256)
            _notice("success", f"Moved {Path(path).name} from {label} to {new_label}.")
        elif action == REMOVE:
            copy.remove(path, label=label, sha256=sha256)
            _notice("success", f"Removed {Path(path).name} from the data set.")
        else:
            copy.keep(path, label=label, sha256=sha256)
    except (TransferError, OSError) as error:
        _notice("error", str(error) if isinstance(error, TransferError) else
                f"{path} could not be changed ({error.strerror}).")


def _keep_pair(pair: dict, context: dict) -> None:
    for path, label in zip((pair["a"], pair["b"]), pair["classes"]):
        _apply("keep", path, label, None, "", context)


def _notice(kind: str, text: str) -> None:
    st.session_state.setdefault("audit_notices", []).append((kind, text))


def _undo(copy: WorkingCopy, edit_id: int) -> None:
    try:
        edit = copy.undo(edit_id)
    except (TransferError, OSError) as error:
        _notice("error", str(error))
    else:
        _notice("success", f"Undone: {_describe(edit)}.")


def _describe(edit: dict) -> str:
    name = Path(edit["path"]).name
    if edit["action"] == MOVE:
        return f"{name} moved from {edit['label']} to {edit['new_label']}"
    if edit["action"] == REMOVE:
        return f"{name} removed from {edit['label']}"
    if edit["action"] == ADD:
        side = "validation" if edit.get("split") == "val" else "training"
        return f"{name} added to {edit['new_label']} ({side}){', from ' + edit['origin'] if edit.get('origin') else ''}"
    return f"{name} kept in {edit['label']}"


def show_changes(copy: WorkingCopy) -> None:
    edits = copy.edits
    with st.expander(f"Your changes ({len(edits)}): the report above and the next training run use them",
                     expanded=True):
        for edit in reversed(edits):
            text, button = st.columns([5, 1], vertical_alignment="center")
            text.markdown(_describe(edit))
            button.button("Undo", key=f"undo:{edit['id']}", on_click=_undo, args=(copy, edit["id"]), icon=":material/undo:")
