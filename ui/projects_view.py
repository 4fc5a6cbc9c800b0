"""Home's "Your projects" and the sidebar's project switcher.

Each project shows its name, a thumbnail, its classes and picture count, its best run's
accuracy and when it was last opened, with Open, Rename, Duplicate and Delete (which asks
first). The work is done by :mod:`transfer.runtime.projects`; which projects a browser sees is
decided by :mod:`ui.project_memory`.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from transfer.core.errors import TransferError
from transfer.core.quota import human_size
from transfer.runtime import access, projects
from transfer.runtime.project_files import open_project_file, save_in_child
from ui import project_memory, session

_NOTICE = "projects_notice"
_RENAMING = "projects_renaming"
_DELETING = "projects_deleting"
_SAVED = "projects_saved_files"  # {project id: the file just saved}


def listed_projects() -> list[projects.Project]:
    """The projects this browser may see, with the open one even while it is still empty."""
    session.workspace()  # the open project's folder exists from its first page on
    return projects.list_projects(project_memory.visible_ids(), include=session.session_token())


# --------------------------------------------------------------------------- the sidebar


def sidebar_switcher() -> None:
    """A line naming the open project, and a menu to switch to another."""
    current = session.session_token()
    listed = listed_projects()
    names = {p.id: p.name for p in listed}
    st.caption(f"Project: **{names[current]}**")
    others = [p for p in listed if p.id != current]
    if others:
        st.selectbox("Switch to project", [None] + [p.id for p in others], key="project_switcher",
                     format_func=lambda i: "Choose a project…" if i is None else names[i],
                     on_change=_switch_from_menu, label_visibility="collapsed")


def _switch_from_menu() -> None:
    chosen = st.session_state.get("project_switcher")
    if chosen:
        session.switch_project(chosen)


# --------------------------------------------------------------------------- Home


def your_projects() -> None:
    """Home's list of projects and what can be done with each."""
    st.subheader("Your projects")
    _show_notice()
    _new_project_form()
    _open_file_form()
    current = session.session_token()
    listed = listed_projects()
    if not any(projects.holds_work(p.path) for p in listed):
        st.caption("Nothing here yet: choose a data set on the Data page and this project keeps it. "
                   "It stays until you delete it.")
    for project in listed:
        _project_card(project, is_open=project.id == current)


def _show_notice() -> None:
    notice = st.session_state.pop(_NOTICE, None)
    if notice:
        (st.success if notice[0] == "success" else st.error)(notice[1])


def _notify(kind: str, text: str) -> None:
    st.session_state[_NOTICE] = (kind, text)


def _new_project_form() -> None:
    with st.form("new_project", clear_on_submit=True, border=False):
        name_column, button_column = st.columns([3, 1], vertical_alignment="bottom")
        name_column.text_input("Name of a new project", key="new_project_name", max_chars=projects.MAX_NAME_CHARS,
                               placeholder="e.g. Cats and dogs")
        button_column.form_submit_button("New project", icon=":material/add:", type="primary",
                                         on_click=_act, args=(_create,))


def _open_file_form() -> None:
    with st.expander("Open a project file", icon=":material/upload_file:"):
        st.caption("A file saved with \"Save as a file\" on this studio or another: it opens as a new project "
                   "with its data, corrections, settings and finished runs.")
        st.file_uploader("Project file", type=["zip"], key="project_file", on_change=_act, args=(_open_file,))


def _open_file() -> None:
    uploaded = st.session_state.get("project_file")
    if uploaded is None:
        return
    opened = open_project_file(uploaded.getvalue())
    session.switch_project(opened.project.id)
    _notify("success", f"Opened {opened.project.name} as a new project, with {opened.runs} finished "
                       f"run{'s' if opened.runs != 1 else ''}; it is open now.")


def _create() -> None:
    project = projects.new_project(st.session_state.get("new_project_name") or "")
    session.switch_project(project.id)
    _notify("success", f"Created the project {project.name}; it is open now. Bring its pictures on the Data page.")


def _act(action, *args) -> None:
    """Run a project action (the callback of a button, so the page then shows its outcome); a
    refusal becomes a sentence above the list."""
    try:
        action(*args)
    except TransferError as error:
        _notify("error", str(error))


@st.cache_data(ttl=20, max_entries=1000, show_spinner=False)
def _summary(project_id: str, changed: tuple) -> projects.ProjectSummary:
    """A project's line, counted again when its data set, runs or manifest change (or after 20 s:
    corrections inside the data set's folders)."""
    return projects.summarise(projects.read_project(project_id))


def _changes(project: projects.Project) -> tuple:
    return tuple(_mtime(project.path / name) for name in (projects.DATASET_FILE, projects.MANIFEST_FILE,
                                                          projects.RUNS_FOLDER))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _project_card(project: projects.Project, *, is_open: bool) -> None:
    summary = _summary(project.id, _changes(project))
    with st.container(border=True):
        picture, words = st.columns([1, 5])
        if summary.thumbnail:
            picture.image(summary.thumbnail, width=96)
        else:
            picture.markdown(":material/photo_library:")
        words.markdown(f"**{project.name}**" + (" · open now" if is_open else ""))
        words.caption(describe(summary))
        _actions(project, is_open, words)


def describe(summary: projects.ProjectSummary) -> str:
    """``2 classes · 240 pictures · 3 runs, best 226 of 240 (94 %) · last opened 6 Dec 2026 21:42``."""
    parts = [f"{summary.classes} class{'es' if summary.classes != 1 else ''} · "
             f"{summary.pictures} picture{'s' if summary.pictures != 1 else ''}" if summary.dataset
             else "no data set yet"]
    if summary.runs:
        shown = summary.best_shown or (f"{summary.best_accuracy:.1%}" if summary.best_accuracy is not None else "")
        best = f", best {shown}" if shown else ""
        parts.append(f"{summary.runs} run{'s' if summary.runs != 1 else ''}{best}")
    parts.append(f"last opened {projects.day_label(summary.last_opened)} "
                 f"{time.strftime('%H:%M', time.localtime(summary.last_opened))}")
    return " · ".join(parts)


def _set(name: str, value) -> None:
    st.session_state[name] = value


def _actions(project: projects.Project, is_open: bool, where) -> None:
    key = project.id
    if st.session_state.get(_RENAMING) == key:
        _rename_form(project, where)
        return
    if st.session_state.get(_DELETING) == key:
        _delete_question(project, is_open, where)
        return
    buttons = where.columns(5)
    if not is_open:
        buttons[0].button("Open", key=f"open:{key}", icon=":material/folder_open:",
                          on_click=session.switch_project, args=(key,))
    buttons[1].button("Rename", key=f"rename:{key}", icon=":material/edit:", on_click=_set, args=(_RENAMING, key))
    buttons[2].button("Duplicate", key=f"duplicate:{key}", icon=":material/content_copy:",
                      on_click=_act, args=(_duplicate, key))
    buttons[3].button("Save as a file", key=f"save:{key}", icon=":material/download:", on_click=_act,
                      args=(_save, key), help="One file with the data, corrections, settings and finished runs, "
                                              "to keep or to open on another studio.")
    buttons[4].button("Delete", key=f"delete:{key}", icon=":material/delete:", on_click=_set, args=(_DELETING, key))
    _offer_saved_file(key, where)


def _save(project_id: str) -> None:
    st.session_state[_SAVED] = {**st.session_state.get(_SAVED, {}), project_id: str(save_in_child(project_id))}


def _offer_saved_file(project_id: str, where) -> None:
    saved = st.session_state.get(_SAVED, {}).get(project_id)
    if not saved or not Path(saved).is_file():
        return
    with open(saved, "rb") as handle:
        where.download_button(f"Download {Path(saved).name} ({human_size(Path(saved).stat().st_size)})", handle.read(),
                              file_name=Path(saved).name, mime="application/zip", key=f"download:{project_id}",
                              icon=":material/download:", type="primary")


def _duplicate(project_id: str) -> None:
    _notify("success", f"Made {projects.duplicate_project(project_id).name}.")


def _rename_form(project: projects.Project, where) -> None:
    with where.form(f"rename_form:{project.id}", border=False):
        st.text_input("New name", value=project.name, key=f"rename_name:{project.id}",
                      max_chars=projects.MAX_NAME_CHARS)
        save, cancel = st.columns(2)
        save.form_submit_button("Save the name", type="primary", on_click=_act, args=(_rename, project.id))
        cancel.form_submit_button("Cancel", on_click=_set, args=(_RENAMING, None))


def _rename(project_id: str) -> None:
    st.session_state[_RENAMING] = None
    renamed = projects.rename_project(project_id, st.session_state.get(f"rename_name:{project_id}") or "")
    _notify("success", f"Renamed to {renamed.name}.")


def _delete_question(project: projects.Project, is_open: bool, where) -> None:
    with where.container(border=True):
        st.warning(f"Delete the project {project.name} for good? Its pictures, corrections, runs and models are "
                   "removed and its demo links stop working. Running runs must be stopped first.",
                   icon=":material/warning:")
        yes, no = st.columns(2)
        no.button("Keep it", key=f"keep:{project.id}", on_click=_set, args=(_DELETING, None))
        yes.button("Delete for good", key=f"confirm_delete:{project.id}", type="primary",
                   on_click=_act, args=(_delete, project, is_open))


def _delete(project: projects.Project, is_open: bool) -> None:
    st.session_state[_DELETING] = None
    freed = projects.delete_project(project.id)
    if is_open:
        session.switch_project(access.issue_session_token())
    _notify("success", f"Deleted the project {project.name} ({human_size(freed)} freed).")
