"""Home's "Your projects": the list, and open, rename, duplicate, delete and new project on it;
the sidebar's project line and switcher; which projects a browser sees with a password."""

from __future__ import annotations

import json

import pytest

from apptools import open_app
from test_projects import session_with_work

from transfer.runtime import projects
from ui import project_memory


def labelled(app, label: str):
    return [b for b in app.button if b.label == label]


def open_now(app) -> str:
    """The project the page marks as open (AppTest keeps the sidebar of a page's first run only)."""
    return next(m.value for m in app.markdown if m.value.endswith(" · open now"))


def project_texts(app) -> str:
    return " ".join(m.value for m in app.markdown) + " " + " ".join(c.value for c in app.caption)


@pytest.fixture
def two_projects(tiny_dataset):
    first, second = session_with_work(tiny_dataset), session_with_work(tiny_dataset)
    projects.rename_project(first.name, "Colours")
    projects.rename_project(second.name, "Shades")
    return first.name, second.name


def test_home_lists_the_projects_with_their_data_and_best_run(two_projects):
    first, second = two_projects
    app = open_app(token=first)
    assert not app.exception, app.exception
    assert app.subheader[0].value == "Your projects"
    text = project_texts(app)
    assert "**Colours** · open now" in text and "**Shades**" in text
    assert "3 classes · 30 pictures · 1 run, best 90.0%" in text and "last opened" in text
    assert any("Project: **Colours**" in c.value for c in app.sidebar.caption)
    assert len(app.image) == 2, "each project shows a thumbnail"


def test_a_visit_without_a_link_continues_the_last_opened_project(two_projects):
    first, second = two_projects
    open_app(token=second)
    app = open_app()
    assert app.query_params["s"] == second
    assert any("Project: **Shades**" in c.value for c in app.sidebar.caption)


def test_open_rename_duplicate_and_delete_from_home(two_projects):
    first, second = two_projects
    app = open_app(token=first)
    app.button(key=f"open:{second}").click().run()
    assert not app.exception, app.exception
    assert app.query_params["s"] == second and open_now(app) == "**Shades** · open now"

    app.button(key=f"rename:{second}").click().run()
    [field] = [t for t in app.text_input if t.label == "New name"]
    field.input("Greys")
    labelled(app, "Save the name")[0].click().run()
    assert not app.exception, app.exception
    assert projects.read_project(second).name == "Greys" and any("Renamed to Greys" in s.value for s in app.success)

    app.button(key=f"duplicate:{first}").click().run()
    assert any("Made Colours (copy)" in s.value for s in app.success)
    assert sorted(p.name for p in projects.list_projects()) == ["Colours", "Colours (copy)", "Greys"]

    app.button(key=f"delete:{first}").click().run()
    assert any("Delete the project Colours for good?" in w.value for w in app.warning)
    app.button(key=f"keep:{first}").click().run()
    assert projects.read_project(first).name == "Colours"
    app.button(key=f"delete:{first}").click().run()
    app.button(key=f"confirm_delete:{first}").click().run()
    assert not app.exception, app.exception
    assert any("Deleted the project Colours" in s.value for s in app.success)
    assert sorted(p.name for p in projects.list_projects()) == ["Colours (copy)", "Greys"]


def test_deleting_the_open_project_opens_an_empty_one(two_projects):
    first, _ = two_projects
    app = open_app(token=first)
    app.button(key=f"delete:{first}").click().run()
    app.button(key=f"confirm_delete:{first}").click().run()
    assert not app.exception, app.exception
    assert app.query_params["s"] != first and "Colours" not in project_texts(app)
    assert open_now(app).startswith("**Untitled project")


def test_new_project_and_the_sidebar_switcher(two_projects):
    first, second = two_projects
    app = open_app(token=first)
    [field] = [t for t in app.text_input if t.label == "Name of a new project"]
    field.input("Leaves")
    labelled(app, "New project")[0].click().run()
    assert not app.exception, app.exception
    made = [p for p in projects.list_projects() if p.name == "Leaves"]
    assert made and app.query_params["s"] == made[0].id and open_now(app) == "**Leaves** · open now"
    fresh = open_app(token=first)
    assert [c.value for c in fresh.sidebar.caption][0] == "Project: **Colours**"
    switcher = fresh.sidebar.selectbox(key="project_switcher")
    assert switcher.format_func(second) == "Shades" and len(switcher.options) == 3
    switcher.set_value(second).run()
    assert fresh.query_params["s"] == second and open_now(fresh) == "**Shades** · open now"


def test_an_empty_name_is_refused_with_a_sentence(two_projects):
    first, _ = two_projects
    app = open_app(token=first)
    labelled(app, "New project")[0].click().run()
    assert any("A project needs a name" in e.value for e in app.error)


def test_with_a_password_a_browser_sees_only_the_projects_it_created_or_opened(two_projects, monkeypatch):
    first, second = two_projects
    monkeypatch.setenv("TRANSFER_PASSWORD", "pw")
    monkeypatch.setattr("ui.gate.unlocked", lambda: True)
    app = open_app(token=first)
    key = app.session_state[project_memory._KEY]
    assert any(f"{project_memory.COOKIE}={key}" in str(getattr(e, "proto", "")) for e in app.sidebar)
    text = project_texts(app)
    assert "**Colours**" in text and "**Shades**" not in text, "this browser never opened Shades"
    # The same browser the next day: no link, its cookie ...
    monkeypatch.setattr(project_memory, "_sent_cookie", lambda: key)
    again = open_app()
    assert again.query_params["s"] == first and "**Colours**" in project_texts(again)
    # ... and another browser sees none of them and starts empty.
    monkeypatch.setattr(project_memory, "_sent_cookie", lambda: None)
    stranger = open_app()
    assert stranger.query_params["s"] not in (first, second)
    assert "Colours" not in project_texts(stranger) and "Shades" not in project_texts(stranger)
    assert json.loads(json.dumps(projects.browser_projects(key))) == [first]


def test_save_a_project_as_a_file_and_open_it_from_home(two_projects, tmp_path):
    first, _ = two_projects
    app = open_app(token=first)
    app.button(key=f"save:{first}").click().run()
    assert not app.exception, app.exception
    [download] = app.get("download_button")
    assert "Colours.transfer.zip" in download.proto.label
    saved = next(projects.projects_root().parent.glob("cache/project-files/*/Colours.transfer.zip"))
    app.file_uploader(key="project_file").set_value(("Colours.transfer.zip", saved.read_bytes(), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("Opened Colours as a new project, with 1 finished run" in s.value for s in app.success)
    opened = [p for p in projects.list_projects() if p.name == "Colours" and p.id != first]
    assert opened and app.query_params["s"] == opened[0].id and open_now(app) == "**Colours** · open now"
    app.file_uploader(key="project_file").set_value(("bad.zip", b"not a zip", "application/zip")).run()
    assert any("not a readable zip" in e.value for e in app.error)
