"""The jobs the web server hands to child processes (transfer.runtime.child_jobs): settings in as
one JSON object, the answer as the last line, an engine's refusal as ``{"error": sentence}``."""

from __future__ import annotations

import json

from test_projects import session_with_work

from transfer.runtime import child_jobs
from transfer.runtime.project_files import save_in_child


def test_a_project_is_saved_by_a_child_process(tiny_dataset, tmp_path):
    workspace = session_with_work(tiny_dataset)
    target = tmp_path / "saved.transfer.zip"
    assert save_in_child(workspace.name, target) == target.resolve()
    assert target.stat().st_size > 0


def test_a_refusal_is_one_sentence_and_exit_status_2(tmp_path, capsys):
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("not weights")
    settings = {"source": str(not_weights), "backbone": "resnet18", "classes": 3}
    assert child_jobs.main(["weights", json.dumps(settings)]) == 2
    assert "is not a weights file" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
