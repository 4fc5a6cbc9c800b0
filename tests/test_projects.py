"""Projects: the manifest, older sessions read as projects, listing, rename, duplicate, delete,
what a browser knows, and a clean-up that keeps projects by default."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from transfer.core.runs import FINISHED, RunDir
from transfer.runtime import access, gc, projects

DAY = 86400.0


def finished_run(runs_dir: Path, accuracy: float, dataset_root: Path | None = None) -> RunDir:
    run = RunDir.create(runs_dir, {"backbone": "efficientnet_lite0", "method": "features", "epochs": 1,
                                   "dataset": {"root": str(dataset_root or runs_dir)}})
    run.update_status(state=FINISHED, best_val_accuracy=accuracy, val_accuracy=accuracy)
    run.write_labels(["blue", "green", "red"])
    run.weights_path.write_bytes(save_safetensors({"head.weight": np.zeros((3, 4), dtype=np.float32)}))
    return run


def session_with_work(dataset: Path) -> Path:
    """A session folder as the studio made them before projects: a data set and one run."""
    token = access.issue_session_token()
    workspace = access.session_dir(token)
    (workspace / "dataset.json").write_text(json.dumps({"source": str(dataset), "name": "tiny"}))
    finished_run(workspace / "runs", 0.9, dataset)
    return workspace


def age(folder: Path, days: float) -> None:
    moment = time.time() - days * DAY
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (moment, moment), follow_symlinks=False)


def test_an_older_session_reads_as_an_untitled_project_with_everything_in_it(tiny_dataset):
    workspace = session_with_work(tiny_dataset)
    age(workspace, 3)
    [project] = projects.list_projects()
    assert project.id == workspace.name and not project.named
    assert project.name == f"Untitled project, {projects.day_label(time.time() - 3 * DAY)}"
    summary = projects.summarise(project)
    assert (summary.classes, summary.pictures, summary.runs, summary.best_accuracy) == (3, 30, 1, 0.9)
    assert summary.thumbnail and Path(summary.thumbnail).is_file()
    assert not (workspace / projects.MANIFEST_FILE).exists() or projects.read_project(project.id).name == project.name


def test_a_visit_that_made_nothing_is_no_project_and_the_clean_up_removes_it_after_a_day(tiny_dataset):
    visit = access.session_dir(access.issue_session_token())
    (visit / "runs").mkdir()  # what opening any page leaves
    projects.mark_opened(visit.name)
    assert not (visit / projects.MANIFEST_FILE).exists(), "opening an empty project writes nothing"
    assert projects.list_projects() == []
    assert [p.id for p in projects.list_projects(include=visit.name)] == [visit.name]
    named = projects.new_project("Leaves")
    assert [p.name for p in projects.list_projects()] == ["Leaves"], "a project named on purpose is kept while empty"
    kept = session_with_work(tiny_dataset)
    for folder in (visit, named.path, kept):
        age(folder, 400)
    result = gc.collect(max_cache_gb=100)
    assert result.max_idle_days is None and result.empty_folders_removed == 1
    assert not visit.exists() and named.path.exists() and kept.exists(), "projects with work are never idle-deleted"


def test_an_operator_idle_limit_still_removes_idle_projects(tiny_dataset, monkeypatch):
    old = session_with_work(tiny_dataset)
    age(old, 40)
    monkeypatch.setenv(gc.MAX_IDLE_DAYS_ENV, "30")
    result = gc.collect(max_cache_gb=100)
    assert result.max_idle_days == 30 and len(result.sessions_removed) == 1 and not old.exists()


def test_rename_duplicate_and_delete(tiny_dataset):
    workspace = session_with_work(tiny_dataset)
    (workspace / "uploads" / "zips" / "a").mkdir(parents=True)
    picture = workspace / "uploads" / "zips" / "a" / "x.png"
    picture.write_bytes((tiny_dataset / "red" / os.listdir(tiny_dataset / "red")[0]).read_bytes())
    (workspace / "dataset.json").write_text(json.dumps({"source": str(workspace / "uploads" / "zips" / "a"),
                                                        "name": "mine"}))
    renamed = projects.rename_project(workspace.name, "  Colours \n of things ")
    assert renamed.name == "Colours of things" and renamed.named
    with pytest.raises(projects.ProjectError, match="needs a name"):
        projects.rename_project(workspace.name, "   ")
    with pytest.raises(projects.ProjectError, match="at most"):
        projects.rename_project(workspace.name, "x" * 81)

    copy = projects.duplicate_project(workspace.name)
    assert copy.name == "Colours of things (copy)" and copy.id != workspace.name
    choice = json.loads((copy.path / "dataset.json").read_text())
    assert choice["source"] == str(copy.path / "uploads" / "zips" / "a"), "the copy uses its own pictures"
    [run] = [RunDir(p) for p in (copy.path / "runs").iterdir() if not p.name.startswith(".")]
    assert run.labels() == ["blue", "green", "red"] and run.status()["best_val_accuracy"] == 0.9
    assert {p.name for p in projects.list_projects()} == {"Colours of things", "Colours of things (copy)"}

    assert projects.delete_project(copy.id) > 0
    assert not copy.path.exists() and workspace.exists() and picture.exists()
    with pytest.raises(projects.ProjectError, match="no longer exists"):
        projects.read_project(copy.id)
    with pytest.raises(projects.ProjectError, match="no such project"):
        projects.read_project("made-up")


def test_find_project_by_name_or_id_refuses_ambiguity(tiny_dataset):
    first = projects.new_project("Birds")
    projects.new_project("Birds")
    with pytest.raises(projects.ProjectError, match="2 projects are called 'Birds'"):
        projects.find_project("Birds")
    assert projects.find_project(first.id).id == first.id
    with pytest.raises(projects.ProjectError, match="no project called"):
        projects.find_project("Fish")


def test_a_browser_knows_only_the_projects_it_opened():
    mine, theirs = projects.new_project("Mine"), projects.new_project("Theirs")
    key = projects.new_browser_key()
    projects.remember_in_browser(key, mine.id)
    assert projects.browser_projects(key) == [mine.id]
    assert [p.name for p in projects.list_projects(projects.browser_projects(key))] == ["Mine"]
    assert projects.browser_projects("a-key-this-studio-never-issued") == []
    assert projects.last_opened_project(projects.browser_projects(key)).id == mine.id
    assert theirs.id not in projects.browser_projects(key)


def test_a_zips_lone_enclosing_folder_is_not_counted_as_a_class(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "upload" / "start", {"red": 2, "green": 3})  # start.zip held start/red, start/green
    classes, pictures = projects.count_pictures(tmp_path / "upload")
    assert sorted(classes) == ["green", "red"] and pictures == 5
