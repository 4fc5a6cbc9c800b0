"""Readable run names: made from what a run trains and when, renameable, the id unchanged;
shown by `transfer runs` and on the Train and Evaluate pages."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from apptools import session_with_dataset, open_app
from transfer.cli.main import main as cli_main
from transfer.core.runs import FINISHED, RunDir
from transfer.models.run_names import RunNameError, default_run_name, distinct_labels, file_stem, rename_run, run_name


def made_at(day: int, hour: int, minute: int) -> float:
    return dt.datetime(2026, 12, day, hour, minute).timestamp()


def test_default_names_say_backbone_method_and_when():
    assert default_run_name({"backbone": "efficientnet_lite0", "method": "features"}, made_at(6, 21, 42)) \
        == "Lite0 feature transfer, 6 Dec 21:42"
    assert default_run_name({"backbone": "resnet50", "method": "finetune"}, made_at(7, 9, 5)) \
        == "resnet50 fine-tuning, 7 Dec 09:05"
    assert default_run_name({"backbone": "efficientnet_lite2", "method": "scratch"}, None) \
        == "Lite2 training from scratch"
    assert file_stem("Lite0 feature transfer, 6 Dec 21:42") == "Lite0-feature-transfer-6-Dec-21-42"


def test_rename_keeps_the_id_and_refuses_empty_or_long_names(tmp_path, capsys):
    run = RunDir.create(tmp_path / "runs", {"backbone": "efficientnet_lite0", "method": "features", "epochs": 1})
    run.update_status(state=FINISHED, best_val_accuracy=0.5)
    assert run_name(run).startswith("Lite0 feature transfer, ")
    assert rename_run(run, "  May   photos ") == "May photos"
    assert run_name(run) == "May photos" and run.path.name == run.id
    with pytest.raises(RunNameError, match="needs a name"):
        rename_run(run, " ")
    with pytest.raises(RunNameError, match="at most 80"):
        rename_run(run, "y" * 81)
    assert cli_main(["rename-run", run.id, "Lite0, first try", "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["name"] == "Lite0, first try"
    assert cli_main(["runs", "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert listed["name"] == "Lite0, first try" and listed["id"] == run.id
    assert cli_main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "Lite0, first try" in capsys.readouterr().out


def test_the_evaluate_page_shows_and_renames_the_run(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)
    run = RunDir.create(workspace / "runs", {"backbone": "efficientnet_lite0", "method": "features", "epochs": 1})
    run.update_status(state=FINISHED, best_val_accuracy=0.75)
    app = open_app("pages/evaluate.py", token=token)
    picker = app.selectbox(key="evaluate_run")
    assert picker.format_func(run.id).startswith("Lite0 feature transfer, ") and picker.format_func(run.id).endswith("75.0%")
    app.text_input(key=f"run_name:{run.id}").input("Colours, first try")
    [save] = [b for b in app.button if b.label == "Save the name"]
    save.click().run()
    assert not app.exception, app.exception
    assert run_name(run) == "Colours, first try" and run.given_name == "Colours, first try"
    assert app.selectbox(key="evaluate_run").format_func(run.id) == "Colours, first try · 75.0%"


def test_runs_with_the_same_name_can_still_be_told_apart_in_a_picker(tmp_path):
    config = {"backbone": "efficientnet_lite0", "method": "features", "epochs": 1}
    first, second = RunDir.create(tmp_path / "runs", config), RunDir.create(tmp_path / "runs", config)
    rename_run(first, "Same"), rename_run(second, "Same")
    third = RunDir.create(tmp_path / "runs", {**config, "method": "finetune"})
    labels = distinct_labels([first, second, third])
    assert labels[first.id] == f"Same · run …{first.id[-6:]}" and labels[second.id] == f"Same · run …{second.id[-6:]}"
    assert labels[third.id].startswith("Lite0 fine-tuning, ")
