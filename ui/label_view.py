"""Pictures without labels (Data page): pools, the suggestions of what to label first, label assist.

A pool is kept in the session (:mod:`transfer.data.pool`); the suggestions are computed by
``python -m transfer.analysis.suggest`` in its own process (the server never loads torch for them) and
shown a page at a time, each with the newest run's guess preselected: a right guess is one
click, a wrong one two. Labelled pictures join the session's working copy of the data set
(:func:`label_picture`, also used by the Predict and Evaluate pages for corrections), where
they are listed and can be undone; the user's own files never change.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from transfer.data import pool as pools
from transfer.data.samples import TRAIN, VAL
from transfer.core.errors import TransferError
from transfer.data.images import IMAGE_EXTENSIONS
from transfer.analysis.trust import plural
from transfer.core.quota import DiskQuota, human_size
from transfer.core.runs import FINISHED, list_runs
from transfer.core.files import read_json
from transfer.data.working_copy import WorkingCopy, WorkingCopyError, split_for_new_label
from ui import audit_view, data_view, jobs_view, reports, session

SUGGESTIONS = 200  # computed per request; shown a page at a time
PAGE_SIZE = 8
COLUMNS = 4
# Whether to suggest the fewest-labelled classes first. Kept apart from its toggle's own key: the
# toggle is not drawn while suggestions are being made, and Streamlit forgets an undrawn widget.
EVEN_OUT_KEY = "suggest_even_out"
EVEN_OUT_TOGGLE = "suggest_even_out_toggle"
THUMBNAIL = 140
NEW_DATA_SET_NAME = "Labelled pictures"
_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS) + ["zip"]


# --------------------------------------------------------------------------- labelling (shared with Predict, Evaluate)


def working_copy_for_labels() -> WorkingCopy:
    """The session's working copy of the chosen data set (made, and chosen, when needed).

    With no data set chosen yet, labelled pictures start a new one.
    """
    copy, choice = audit_view.working_copy(), session.chosen_dataset()
    if choice is None:
        if not copy.exists() or copy.original is not None:
            copy.start_empty()
        session.choose_dataset(copy.data, NEW_DATA_SET_NAME)
        return copy
    if copy.exists() and copy.original is None and copy.edits and str(choice["source"]) != str(copy.data):
        raise WorkingCopyError(f"Your labelled pictures form the data set '{NEW_DATA_SET_NAME}'; choose it again "
                               "(button below) to add more to it.")
    if copy.serves(choice["source"]):
        if str(choice["source"]) != str(copy.data):  # the original chosen again: its copy keeps the labels
            session.choose_dataset(copy.data, choice["name"], val_fraction=float(choice["val_fraction"]),
                                   seed=int(choice["seed"]))
        return copy
    report = reports.chosen_report(choice)
    if report.dataset is None:
        raise WorkingCopyError("The chosen data set has problems to fix first: " + " ".join(report.errors))
    copy.materialise(report.dataset, choice["source"])
    session.choose_dataset(copy.data, choice["name"], val_fraction=float(choice["val_fraction"]),
                           seed=int(choice["seed"]))
    return copy


def frozen_working_copy() -> WorkingCopy:
    """The working copy, each of its pictures fixed on its side of the split (see ``freeze_split``)."""
    copy = working_copy_for_labels()
    choice = session.chosen_dataset()
    report = reports.chosen_report(choice) if choice else None
    if report is not None and report.dataset is not None:
        copy.freeze_split(report.dataset)
    return copy


def class_counts(label: str) -> tuple[int, int]:
    """Training and validation pictures the chosen data set has of ``label`` now."""
    choice = session.chosen_dataset()
    if choice is None:
        return 0, 0
    row = reports.chosen_report(choice).counts.get(label) or {}
    return int(row.get(TRAIN, 0)), int(row.get(VAL, 0))


def label_picture(picture: Path | bytes, label: str, *, name: str, origin: str, to_training: bool = False) -> str:
    """Add a picture to the working copy under ``label``; returns a sentence saying what happened.

    ``to_training``: corrections of answers go to training, so the validation pictures stay the
    ones earlier runs were measured on; pictures labelled from a pool keep about a fifth of each
    class for validation (the first ones of a new class must be able to validate it).
    """
    label = (label or "").strip()
    copy = frozen_working_copy()
    split = TRAIN if to_training else split_for_new_label(*class_counts(label))
    copy.add(picture, label, name=name, split=split, origin=origin)
    return f"{Path(name).name} added to {label} ({'validation' if split == VAL else 'training'})."


def known_classes() -> list[str]:
    """The classes of the chosen data set (they grow as pictures are labelled)."""
    choice = session.chosen_dataset()
    if choice is None:
        return []
    try:
        report = reports.chosen_report(choice)
    except TransferError:
        return []
    return list(report.classes)


def correct_validation_label(run_config: dict, path: str, given: str, label: str, sha256: str) -> str:
    """Evaluate page: a validation picture's label was wrong; file it under ``label`` in the working copy.

    It stays a validation picture, so the next run is measured on the same pictures.
    """
    copy = frozen_working_copy()
    root = (run_config.get("dataset") or {}).get("root") if isinstance(run_config.get("dataset"), dict) \
        else run_config.get("dataset")
    if root is not None and not _within(root, copy.data) and not (copy.original and _within(root, copy.original)):
        raise WorkingCopyError("This run was trained on another data set than the one chosen; choose that data set "
                               "on the Data page to correct its labels.")
    copy.move(path, label, label=given, sha256=sha256)
    return f"{Path(path).name} is now filed under {label} (still a validation picture)."


def _within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or inside it (a data set's root may lie below the folder chosen)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


def _correction_notice(key: str) -> None:
    notice = st.session_state.pop(f"{key}:notice", None)
    if notice:
        (st.error if notice[0] == "error" else st.success)(notice[1])


def _correct(key: str, action, *args, **kwargs) -> None:
    try:
        st.session_state[f"{key}:notice"] = ("success", action(*args, **kwargs))
    except (TransferError, OSError) as error:
        st.session_state[f"{key}:notice"] = ("error", str(error) if isinstance(error, TransferError) else
                                             f"The picture could not be added ({error.strerror}).")


def _correct_from(key: str, widget: str, action, *args, **kwargs) -> None:
    label = st.session_state.get(widget)
    if label:
        _correct(key, action, *args, label, **kwargs)


def prediction_corrections(data: bytes, name: str, predicted: str, classes: list[str], key: str, origin: str) -> None:
    """Predict page: "It is right" / "It is actually …" put the picture into the data set (training)."""
    import hashlib

    _correction_notice(key)
    copy = audit_view.working_copy()
    added = copy.added().get(hashlib.sha256(data).hexdigest()) if copy.exists() else None
    if added:
        st.caption(f"In your data set as **{added['new_label']}**; the next run trains on it "
                   "(undo it on the Data page).")
        return
    label_it = lambda label: label_picture(data, label, name=name, origin=origin, to_training=True)
    right, other = st.columns([1, 2], vertical_alignment="bottom")
    right.button(f"It is right: {predicted}", key=f"{key}:right", icon=":material/thumb_up:", on_click=_correct,
                 args=(key, label_it, predicted), help="Adds the picture to your data set under this class.")
    others = sorted({c for c in classes if c != predicted})
    other.selectbox("It is actually …", others, index=None, key=f"{key}:actually", placeholder="choose the right class",
                    on_change=_correct_from, args=(key, f"{key}:actually", label_it))


def validation_corrections(run_config: dict, path: str, given: str, predicted: str, sha256: str,
                           classes: list[str], key: str) -> None:
    """Evaluate page, a wrong answer: "Relabel as <the class the model said>" or as another class fix the picture's label."""
    _correction_notice(key)
    copy = audit_view.working_copy()
    moved = [e for e in copy.edits if e["sha256"] == sha256 and e["action"] == "move"] if copy.exists() else []
    if moved:
        st.caption(f"Filed under **{moved[-1]['new_label']}** in your data set (undo it on the Data page).")
        return
    fix = lambda label: correct_validation_label(run_config, path, given, label, sha256)
    # The wording names the label the picture gets: "It is <class>" read like a confirmation of the answer.
    st.button(f"Relabel as {predicted}", key=f"{key}:right", on_click=_correct, args=(key, fix, predicted),
              width="stretch", help=f"The model is right and the label was wrong: the picture's label becomes "
                                    f"{predicted} (it was {given}).")
    st.selectbox("Relabel as another class", [c for c in classes if c not in (given, predicted)], index=None,
                 key=f"{key}:actually", placeholder="other class", label_visibility="collapsed",
                 on_change=_correct_from, args=(key, f"{key}:actually", fix))


# --------------------------------------------------------------------------- pools


def _notice(kind: str, text: str) -> None:
    st.session_state.setdefault("label_notices", []).append((kind, text))


def _show_notices() -> None:
    for kind, text in st.session_state.pop("label_notices", []):
        {"error": st.error, "success": st.success}.get(kind, st.info)(text)


def _key(name: str) -> str:
    return f"{name}#{st.session_state.get('label_generation:' + name, 0)}"


def _empty(name: str) -> None:
    st.session_state["label_generation:" + name] = st.session_state.get("label_generation:" + name, 0) + 1


def add_pool(files) -> None:
    quota = DiskQuota.for_session(session.workspace())
    try:
        with st.spinner("Saving the pictures…"):
            if len(files) == 1 and files[0].name.lower().endswith(".zip"):
                folder = pools.add_zip_pool(files[0].getvalue(), session.uploads_dir(), quota=quota,
                                            name=files[0].name)
            else:
                name = f"{plural(len(files), 'dropped picture')}" if not any("/" in f.name for f in files) else ""
                folder = pools.add_files_pool([(f.name, f.getvalue()) for f in files], session.uploads_dir(),
                                              quota=quota, name=name)
    except TransferError as error:
        _notice("error", f"The pictures cannot be kept: {error}")
        return
    st.session_state["chosen_pool"] = folder.name
    _notice("success", f"Kept {plural(len(pools.pool_pictures(folder)), 'picture')} without labels.")


def _delete_pool(pool_id: str) -> None:
    try:
        pools.delete_pool(session.uploads_dir(), pool_id)
    except TransferError as error:
        _notice("error", str(error))


def pool_section() -> None:
    """Data page: keep pictures without labels, then label them in the order suggested."""
    st.subheader("Pictures without labels")
    st.caption("Drop pictures, a folder or a zip of them without sorting them into classes. The studio says which "
               "to label first (those typical of what nothing labelled covers yet, then where the model hesitates) "
               "and guesses their class; labelled pictures join your data set.")
    _show_notices()
    # Full width, one under the other: in half a page the list of file types was cut off.
    files = st.file_uploader("Drop pictures or a .zip", type=_TYPES, accept_multiple_files=True, key=_key("pool_files"))
    chosen_folder = st.file_uploader("Or choose a folder", accept_multiple_files="directory", key=_key("pool_folder"))
    for uploaded, name in ((files, "pool_files"), (chosen_folder, "pool_folder")):
        if uploaded:
            add_pool(uploaded)
            _empty(name)
            st.rerun()
    found = pools.list_pools(session.uploads_dir()) + demo_pools()
    if not found:
        return
    by_id = {p.id: p for p in found}
    if st.session_state.get("chosen_pool") not in by_id:
        st.session_state["chosen_pool"] = found[0].id
    pick, remove = st.columns([4, 1], vertical_alignment="bottom")
    chosen = by_id[pick.selectbox("Pool", list(by_id), key="chosen_pool",
                                  format_func=lambda i: f"{by_id[i].name} ({human_size(by_id[i].bytes)})")]
    if chosen.id.startswith(DEMO_POOL_PREFIX):
        remove.caption("Revoking the demo link deletes these pictures.")
    else:
        remove.button("Delete pool", icon=":material/delete:", on_click=_delete_pool, args=(chosen.id,), key="delete_pool",
                      help="Pictures already labelled stay in your data set.")
    copy = audit_view.working_copy()
    choice = session.chosen_dataset()
    if copy.exists() and copy.original is None and copy.edits and (choice or {}).get("source") != str(copy.data):
        st.button(f"Use my labelled pictures ({len(copy.edits)})", key="use_labelled",
                  on_click=session.choose_dataset, args=(copy.data, NEW_DATA_SET_NAME))
    label_assist(chosen)


DEMO_POOL_PREFIX = "demo-"


def demo_pools() -> list[pools.Pool]:
    """The pictures visitors tried on this session's collecting demo links, each a pool to review."""
    from transfer.serving import demo_collect
    from transfer.core.quota import folder_bytes
    from transfer.serving.share import OWNER_FILE, DemoStore

    found = []
    for _, demo in DemoStore().owned(session.workspace() / OWNER_FILE):
        if demo_collect.settings_of(demo) and demo_collect.collected_count(demo):
            folder = demo_collect.collected_folder(demo)
            found.append(pools.Pool(f"{DEMO_POOL_PREFIX}{demo.id}", f"Tried by visitors of the demo '{demo.title}'",
                                    folder, folder_bytes(folder), demo.created_at))
    return found


# --------------------------------------------------------------------------- suggestions and label assist


def suggestion_job(pool: pools.Pool):
    """The pool's suggestions, as a side job of the session."""
    return jobs_view.side_job(session.workspace() / "suggest" / pool.id)


def newest_finished_run() -> Path | None:
    """The session's newest finished run: its guesses are shown, and its pictures count as labelled."""
    for run in list_runs(session.runs_dir()):
        if run.state == FINISHED and (run.path / "model.json").is_file():
            return run.path
    return None


def start_suggestions(pool: pools.Pool) -> None:
    job = suggestion_job(pool)
    folder = job.folder
    arguments = [str(pool.path), str(folder), "--count", str(SUGGESTIONS)]
    if st.session_state.get(EVEN_OUT_KEY):
        arguments.append("--even-out")
    choice = session.chosen_dataset()
    if choice is not None:
        arguments += ["--dataset", str(choice["source"])]
    run = newest_finished_run()
    if run is not None:
        arguments += ["--run", str(run)]
    (folder / "skipped.json").unlink(missing_ok=True)
    st.session_state[f"suggestion_page:{pool.id}"] = 0
    job.start({"job": "suggest", "arguments": arguments}, model_run=str(run) if run else None)


def label_assist(pool: pools.Pool) -> None:
    suggestions = suggestion_job(pool)
    folder = suggestions.folder
    result = jobs_view.job_outcome(suggestions, "Suggest what to label first", lambda: start_suggestions(pool))
    if not result:
        return
    job = suggestions.details()
    labelled = set(audit_view.working_copy().added()) if audit_view.working_copy().exists() else set()
    skipped = set(read_json(folder / "skipped.json", None) or [])
    waiting = [s for s in result["suggestions"] if s["sha256"] not in labelled | skipped]
    labelled_since = [s for s in result["suggestions"] if s["sha256"] in labelled]
    left, right = st.columns([3, 1], vertical_alignment="center")
    guessed_by = f", guesses by run `{Path(job['model_run']).name}`" if job.get("model_run") else ""
    left.caption(counts_sentence(result, labelled_since, len(waiting), guessed_by))
    right.button("Suggest again", icon=":material/refresh:", on_click=start_suggestions, args=(pool,), key="suggest_again",
                 help="After labelling or training: the order takes the new labels and the newest run into account.")
    balance = balance_sentence(result, labelled_since)
    if balance:
        st.info(balance, icon=":material/balance:")
    if balance or result.get("evened"):
        st.toggle("Suggest the classes with the fewest labels first", value=bool(st.session_state.get(EVEN_OUT_KEY)),
                  key=EVEN_OUT_TOGGLE, on_change=_even_out_changed, args=(pool,),
                  help="Evens the classes out as you label. Off by default: the studio's head weighs classes "
                       "by their size, and when measured, evening the labels out cost accuracy (see the README).")
    if not waiting:
        st.success("Nothing waiting: suggest again for more, or train with what you labelled.")
        return
    page_key = f"suggestion_page:{pool.id}"
    pages = (len(waiting) + PAGE_SIZE - 1) // PAGE_SIZE
    page = min(st.session_state.get(page_key, 0), pages - 1)
    shown = waiting[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    classes = known_classes()
    for start in range(0, len(shown), COLUMNS):
        for column, suggestion in zip(st.columns(COLUMNS), shown[start:start + COLUMNS]):
            with column.container(border=True):
                suggestion_card(pool, suggestion, classes, waiting.index(suggestion) + 1)
    if pages > 1:
        back, where, forward = st.columns([1, 2, 1], vertical_alignment="center")
        back.button("Previous", key="suggestions_back", disabled=page == 0,
                    on_click=lambda: st.session_state.update({page_key: page - 1}))
        where.caption(f"Page {page + 1} of {pages}")
        forward.button("Next", key="suggestions_next", disabled=page >= pages - 1,
                       on_click=lambda: st.session_state.update({page_key: page + 1}))


def _even_out_changed(pool: pools.Pool) -> None:
    st.session_state[EVEN_OUT_KEY] = st.session_state[EVEN_OUT_TOGGLE]
    start_suggestions(pool)


def counts_sentence(result: dict, labelled_since: list[dict], waiting: int, guessed_by: str) -> str:
    """The pool's pictures without labels and the labelled pictures, both following the labels given since
    the suggestions were made (each labelled picture counted once)."""
    return (f"{plural(result['pictures'] - len(labelled_since), 'picture')} without labels, "
            f"{result['labelled'] + len(labelled_since):,} labelled{guessed_by}. "
            f"{plural(waiting, 'suggestion')} waiting.")


def balance_sentence(result: dict, labelled_since: list[dict]) -> str:
    """When the labelled classes are uneven: which have the fewest labels, and what the order does about it
    (when asked to even them out)."""
    counts = dict(result.get("labelled_per_class") or {})
    if len(counts) < 2:
        return ""
    for suggestion in labelled_since:  # labelled as guessed, mostly; close enough to say which classes are short
        if suggestion.get("guess") in counts:
            counts[suggestion["guess"]] += 1
    fewest = min(counts.values())
    short = [name for name, count in counts.items() if count == fewest]
    listing = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda item: item[1]))
    if max(counts.values()) - fewest < 2:  # even (again): nothing to do about it
        return f"Labelled pictures per class: {listing}: the classes are even." if result.get("evened") else ""
    evening = (" The suggestions put first the pictures the model guesses to be of the classes with the fewest "
               "labels, so that labelling evens the classes out." if result.get("evened") else "")
    return (f"Labelled pictures per class: {listing}. Label more of {', '.join(short)} before training again: "
            f"a class with few pictures is learnt badly.{evening}")


def suggestion_card(pool: pools.Pool, suggestion: dict, classes: list[str], rank: int) -> None:
    key = f"suggestion:{suggestion['sha256'][:16]}"
    _thumbnail(pool.path / suggestion["file"])
    st.caption(f"#{rank} {Path(suggestion['file']).name}: {suggestion['reason']}")
    guess = suggestion.get("guess")
    if guess:
        probability = suggestion.get("probability")
        st.button(f"It is {guess}" + (f" ({probability:.0%})" if probability is not None else ""),
                  key=f"{key}:guess", type="primary", width="stretch", on_click=_label,
                  args=(pool, suggestion, guess))
    others = [c for c in classes if c != guess]
    if others:
        st.selectbox("It is actually …" if guess else "It is …", others, index=None, key=f"{key}:other",
                     placeholder="choose a class", on_change=_label_from, args=(pool, suggestion, f"{key}:other"))
    st.text_input("New class", key=f"{key}:new", placeholder="name a new class", on_change=_label_from,
                  args=(pool, suggestion, f"{key}:new"))
    st.button("Skip", key=f"{key}:skip", width="stretch", on_click=_skip, args=(pool, suggestion))


def _thumbnail(path: Path) -> None:
    array = data_view.thumbnail_array(str(path), str(path.stat().st_mtime_ns) if path.exists() else "gone", THUMBNAIL)
    if array is None:
        st.caption(f"({path.name} cannot be shown)")
    else:
        st.image(array, width=THUMBNAIL)


def _label_from(pool: pools.Pool, suggestion: dict, widget: str) -> None:
    label = st.session_state.get(widget)
    if label:
        _label(pool, suggestion, label)


def _label(pool: pools.Pool, suggestion: dict, label: str) -> None:
    picture = (pool.path / suggestion["file"]).resolve()
    if not picture.is_relative_to(pool.path.resolve()) or not picture.is_file():
        _notice("error", f"{suggestion['file']} is not in the pool any more; suggest again.")
        return
    try:
        _notice("success", label_picture(picture, label, name=picture.name, origin=f"the pool {pool.name}"))
    except (TransferError, OSError) as error:
        _notice("error", str(error) if isinstance(error, TransferError) else
                f"{picture.name} could not be added ({error.strerror}).")


def _skip(pool: pools.Pool, suggestion: dict) -> None:
    from transfer.core.files import atomic_write_json

    path = suggestion_job(pool).folder / "skipped.json"
    skipped = read_json(path, None) or []
    atomic_write_json(path, [*skipped, suggestion["sha256"]])
