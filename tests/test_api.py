"""The Python API (transfer/api.py): the README's example runs as written, and ``import transfer`` stays light.

The README example trains on a folder named ``photos`` in the current directory; the test makes
one (two classes of generated pictures, plus the picture the example predicts) in a temporary
folder and runs the README's code block unchanged there, so a run folder lands in ``./runs``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import transfer
from transfer.core.runs import RunDir, RunNotFound
from transfer.data.samples import DataError

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The first ``python`` code block of the README's "From Python" section."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_transfer_loads_no_torch():
    code = "import transfer, sys; assert 'torch' not in sys.modules, 'import transfer loaded torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, write_class_folders, make_picture):
    photos = write_class_folders(tmp_path / "photos", {"ants": 10, "bees": 10})
    example = readme_python_example()
    pictures = re.findall(r'"photos/(\w+/[\w.]+\.jpg)"', example)
    for name in pictures:  # the pictures the example predicts, beside the training ones
        make_picture(0, 99).save(photos / name)
    monkeypatch.chdir(tmp_path)

    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)

    assert names["report"].ok and names["report"].classes == ["ants", "bees"]
    run = names["run"]
    assert run.state == "finished" and run.path.parent == (tmp_path / "runs").resolve()
    assert transfer.runs() == [run] and transfer.open_run(run.id) == run
    assert len(names["answers"]) == len(pictures) and names["answers"][0].label == "ants"
    assert names["bundle"].is_file() and names["bundle"].suffix == ".zip"


def test_open_run_takes_an_id_a_folder_or_a_run(tmp_path):
    folder = RunDir.create(tmp_path / "runs", {"job": "train", "method": "features"})
    by_id = transfer.open_run(folder.id, runs_dir=tmp_path / "runs")
    assert by_id.path == folder.path and by_id.state == "queued"
    assert transfer.open_run(folder.path) == by_id == transfer.open_run(by_id)
    assert transfer.runs(tmp_path / "runs") == [by_id]
    with pytest.raises(RunNotFound):
        transfer.open_run("no-such-run", runs_dir=tmp_path / "runs")


def test_train_refuses_data_that_cannot_train_before_making_a_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        transfer.train(empty, runs_dir=tmp_path / "runs")
    assert transfer.runs(tmp_path / "runs") == []
