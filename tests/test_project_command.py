"""`transfer project list|save|open|rename|delete` (each --json) and `--project NAME` where a
command takes a runs folder."""

from __future__ import annotations

import json

from test_projects import session_with_work

from transfer.cli.main import main
from transfer.runtime import projects


def answer(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_list_save_open_rename_and_delete(tiny_dataset, tmp_path, capsys, monkeypatch):
    workspace = session_with_work(tiny_dataset)
    projects.rename_project(workspace.name, "Colours")
    assert main(["project", "list", "--json"]) == 0
    [listed] = answer(capsys)["projects"]
    assert listed["name"] == "Colours" and listed["classes"] == 3 and listed["pictures"] == 30 and listed["runs"] == 1

    target = tmp_path / "colours.transfer.zip"
    assert main(["project", "save", "Colours", "--output", str(target), "--json"]) == 0
    saved = answer(capsys)
    assert saved["path"] == str(target) and saved["runs"] == 1 and target.stat().st_size == saved["bytes"]

    assert main(["project", "open", str(target), "--json"]) == 0
    opened = answer(capsys)
    assert opened["name"] == "Colours" and opened["id"] != workspace.name and opened["runs"] == 1

    assert main(["project", "rename", opened["id"], "Colours at home", "--json"]) == 0
    assert answer(capsys)["name"] == "Colours at home"
    assert main(["runs", "--project", "Colours at home", "--json"]) == 0
    runs = answer(capsys)
    assert runs["runs_dir"] == opened["runs_dir"] and len(runs["runs"]) == 1

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["project", "delete", "Colours at home", "--json"]) == 2
    assert "add --yes" in answer(capsys)["error"]
    assert main(["project", "delete", "Colours at home", "--yes", "--json"]) == 0
    assert answer(capsys)["bytes_freed"] > 0
    assert [p.name for p in projects.list_projects()] == ["Colours"]

    assert main(["project", "open", str(tmp_path / "missing.zip"), "--json"]) == 2
    assert "Cannot read" in answer(capsys)["error"]
    assert main(["runs", "--project", "Nothing", "--json"]) == 2
    assert "no project called 'Nothing'" in answer(capsys)["error"]
