"""Where the Data page's pictures come from: a zip, a folder, classes built picture by picture
(upload or webcam), or the demo data set.

Everything a user uploads is written under this browser session's own workspace
(:mod:`transfer.data.uploads`); the chosen source becomes the session's data set.
"""

from __future__ import annotations

from functools import partial

import streamlit as st

from transfer.analysis.trust import plural
from transfer.core.errors import TransferError
from transfer.core.quota import DiskQuota
from transfer.data import uploads
from transfer.data.dataset import demo_dataset_path
from transfer.data.images import IMAGE_EXTENSIONS
from ui import data_view, session

BUILDER_NAME = "Your classes"
PICTURE_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SOURCE_TABS = ["Zip file", "Folder", "Build class by class", "Demo data"]


# --------------------------------------------------------------------------- small state helpers


def widget_key(name: str) -> str:
    """An uploader's key; bumping its generation empties the widget once its files are saved."""
    return f"{name}#{st.session_state.get('upload_generation:' + name, 0)}"


def empty_widget(name: str) -> None:
    st.session_state["upload_generation:" + name] = st.session_state.get("upload_generation:" + name, 0) + 1


def notify(kind: str, text: str) -> None:
    """A message shown once, at the top of the page, after the action that caused it."""
    st.session_state.setdefault("data_notices", []).append((kind, text))


def show_notices() -> None:
    for kind, text in st.session_state.pop("data_notices", []):
        {"error": st.error, "warning": st.warning, "success": st.success}.get(kind, st.info)(text)


def builder_folder():
    return uploads.builder_folder(session.uploads_dir())


def choose(source, name: str) -> None:
    """Make ``source`` this session's data set; the split settings the user picked carry over."""
    current = session.chosen_dataset() or {}
    session.choose_dataset(
        source, name, val_fraction=current.get("val_fraction", 0.2), seed=current.get("seed", 0)
    )


def describe_skips(skipped) -> str:
    names = ", ".join(f"{s.path.rsplit('/', 1)[-1]} ({s.reason})" for s in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f"Left out {plural(len(skipped), 'file')} that are not usable pictures: {names}{more}."


# --------------------------------------------------------------------------- actions


def session_quota() -> DiskQuota:
    """This session's disk quota (uploads and runs count); a bad setting raises a sentence."""
    return DiskQuota.for_session(session.workspace())


def use_zip(uploaded) -> None:
    try:
        with st.spinner(f"Unpacking {uploaded.name}…"):
            folder = uploads.unpack_zip_upload(uploaded.getvalue(), session.uploads_dir(),
                                               quota=session_quota(), name=uploaded.name)
    except TransferError as error:
        notify("error", f"{uploaded.name}: {error}")
    else:
        choose(folder, uploaded.name)
        notify("success", f"Using the pictures in {uploaded.name}.")


def use_folder(files) -> None:
    names = [f.name for f in files]
    try:
        with st.spinner(f"Saving {len(files)} files…"):
            folder = uploads.unpack_folder_upload([(f.name, f.getvalue()) for f in files], session.uploads_dir(),
                                                  quota=session_quota())
    except TransferError as error:
        notify("error", f"The folder cannot be used: {error}")
    else:
        name = uploads.uploaded_folder_name(names)
        choose(folder, name)
        notify("success", f"Using the pictures in the folder {name}.")


def use_demo() -> None:
    path = demo_dataset_path()
    if not path.is_dir():
        notify("error", "The demo data set is missing from this installation; reinstall Transfer Studio or bring your own pictures.")
        return
    choose(path, "Demo data set")
    notify("success", "Using the demo data set.")


def use_builder() -> None:
    choose(builder_folder(), BUILDER_NAME)


def add_class() -> None:
    name = st.session_state.get("new_class_name", "")
    try:
        uploads.add_class(builder_folder(), name)
    except TransferError as error:
        notify("error", str(error))
        return
    st.session_state["new_class_name"] = ""
    use_builder()


def rename_class(old: str) -> None:
    try:
        uploads.rename_class(builder_folder(), old, st.session_state.get(f"class_name:{old}", old))
    except TransferError as error:
        notify("error", str(error))
        st.session_state[f"class_name:{old}"] = old  # show the name the class still has
    use_builder()


def remove_class(name: str) -> None:
    try:
        uploads.remove_class(builder_folder(), name)
    except TransferError as error:
        notify("error", str(error))
    use_builder()


def remove_picture(name: str, file_name: str) -> None:
    try:
        uploads.remove_picture(builder_folder(), name, file_name)
    except TransferError as error:
        notify("error", str(error))
    use_builder()


def add_pictures(name: str, files: list[tuple[str, bytes]]) -> None:
    try:
        added, skipped = uploads.add_pictures(builder_folder(), name, files, session_quota())
    except TransferError as error:
        notify("error", str(error))
        return
    if skipped:
        notify("warning", describe_skips(skipped))
    if added:
        notify("success", f"Added {plural(added, 'picture')} to {name}.")
    use_builder()


# --------------------------------------------------------------------------- sources


def zip_tab() -> None:
    st.markdown(
        "A `.zip` of a folder with one sub-folder per class (`cats/`, `dogs/`, ...), or with "
        "`train/` and `val/` folders that each hold the class folders."
    )
    uploaded = st.file_uploader("Drop a .zip file here", type=["zip"], key=widget_key("zip"))
    if uploaded is not None:
        use_zip(uploaded)
        empty_widget("zip")
        st.rerun()


def folder_tab() -> None:
    st.markdown("Pick the folder that holds one sub-folder per class; every picture inside is uploaded.")
    files = st.file_uploader("Choose a folder", accept_multiple_files="directory", key=widget_key("folder"))
    if files:
        use_folder(files)
        empty_widget("folder")
        st.rerun()


def builder_tab() -> None:
    st.markdown("Make a class, name it, then add pictures by upload or with the webcam. Two classes are the least.")
    folder = builder_folder()
    name_column, button_column = st.columns([3, 1], vertical_alignment="bottom")
    name_column.text_input("Name of a new class", key="new_class_name", placeholder="for example: cat")
    button_column.button("Add class", on_click=add_class, icon=":material/add:")
    classes = uploads.builder_classes(folder)
    for name, pictures in classes.items():
        class_card(name, pictures)
    if classes and (session.chosen_dataset() or {}).get("name") != BUILDER_NAME:
        st.button("Use these classes as the data set", on_click=use_builder, type="primary")


def class_card(name: str, pictures) -> None:
    with st.container(border=True):
        title, remove = st.columns([4, 1], vertical_alignment="bottom")
        st.session_state.setdefault(f"class_name:{name}", name)
        title.text_input(
            f"Class name ({len(pictures)} pictures)", key=f"class_name:{name}", on_change=rename_class, args=(name,)
        )
        remove.button("Remove class", key=f"remove_class:{name}", on_click=remove_class, args=(name,), icon=":material/delete:")
        files = st.file_uploader(
            f"Add pictures to {name}", type=PICTURE_TYPES, accept_multiple_files=True, key=widget_key(f"add:{name}")
        )
        if files:
            add_pictures(name, [(f.name, f.getvalue()) for f in files])
            empty_widget(f"add:{name}")
            st.rerun()
        if st.toggle("Take pictures with the webcam", key=f"webcam_on:{name}"):
            photo = st.camera_input(f"Take a picture of {name}", key=widget_key(f"webcam:{name}"))
            if photo is not None:
                add_pictures(name, [("webcam.jpg", photo.getvalue())])
                empty_widget(f"webcam:{name}")
                st.rerun()
        data_view.picture_grid(pictures, partial(remove_picture, name), key=f"picture:{name}")


def demo_tab() -> None:
    st.markdown(
        "A small set of public-domain clip art that ships with the studio: try every page offline "
        "before bringing your own pictures."
    )
    st.button("Use the demo data set", on_click=use_demo, type="primary", icon=":material/redeem:")


# --------------------------------------------------------------------------- the tabs


def remember_tab() -> None:
    st.session_state["data_source_tab_kept"] = st.session_state["data_source_tab"]


def source_tabs() -> None:
    """The four ways in, one tab each. The tabs keep their state on the server, so the rerun
    after every upload or click (and a visit to another page) comes back to the tab the user
    was working in."""
    zip_source, folder_source, builder_source, demo_source = st.tabs(
        SOURCE_TABS, key="data_source_tab", default=st.session_state.get("data_source_tab_kept", SOURCE_TABS[0]),
        on_change=remember_tab,
    )
    with zip_source:
        zip_tab()
    with folder_source:
        folder_tab()
    with builder_source:
        builder_tab()
    with demo_source:
        demo_tab()
