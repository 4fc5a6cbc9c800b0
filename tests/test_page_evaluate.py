"""Evaluate page (AppTest) over a real, tiny finished run: accuracy, confusion matrix, metrics per
class, the top-losses gallery; clear sentences for runs that are not finished or not evaluable.

One feature-transfer run (2 epochs at 64 px, about 20 s on 2 cores) is trained once for this
module and the Predict page's tests (:func:`shared_trained_session`), in a home of its own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from apptools import open_app
from pictures import write_class_folders as _write_class_folders
from transfer.runtime.access import issue_session_token
from transfer.training.config import TrainConfig
from transfer.runtime.jobs import JobManager
from transfer.core.runs import RunDir

CLASSES = {"red": 10, "green": 10, "blue": 10}


@dataclass
class TrainedSession:
    """A browser session's token and home, holding one finished run."""

    home: Path
    token: str
    run: RunDir
    dataset: Path

    @property
    def runs_dir(self) -> Path:
        return self.home / "sessions" / self.token / "runs"


_TRAINED: dict[str, TrainedSession] = {}


def shared_trained_session(tmp_path_factory) -> TrainedSession:
    """Train the tiny run once per test session, through the job manager as the Train page does."""
    if "run" not in _TRAINED:
        home = tmp_path_factory.mktemp("trained_home")
        dataset = _write_class_folders(tmp_path_factory.mktemp("trained_data") / "colours", CLASSES)
        config = TrainConfig.for_method("features", dataset=str(dataset), epochs=2, image_size=64)
        with pytest.MonkeyPatch.context() as patch:  # the worker process inherits this home
            patch.setenv("TRANSFER_HOME", str(home))
            patch.setenv("TRANSFER_OFFLINE", "1")
            token = issue_session_token()
            runs_dir = home / "sessions" / token / "runs"
            manager = JobManager(runs_dir)
            run = manager.submit(config.to_dict())
            status = manager.wait(run.id, timeout=180)
        assert status["state"] == "finished", (status, run.log_path.read_text() if run.log_path.exists() else "")
        _TRAINED["run"] = TrainedSession(home, token, run, dataset)
    return _TRAINED["run"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedSession:
    return shared_trained_session(tmp_path_factory)


@pytest.fixture
def in_trained_home(trained, transfer_home, monkeypatch) -> TrainedSession:
    """Point this test's ``TRANSFER_HOME`` at the trained run's home (after the private one is set)."""
    monkeypatch.setenv("TRANSFER_HOME", str(trained.home))
    return trained


def chart_specs(app) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def all_text(app) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
             for e in getattr(app, kind)]
    return "\n".join(str(p) for p in parts)


def test_evaluate_shows_accuracy_confusion_matrix_and_per_class_metrics(in_trained_home):
    trained = in_trained_home
    app = open_app("pages/evaluate.py", token=trained.token)
    assert not app.exception
    assert app.query_params["run"] == [trained.run.id] or app.query_params["run"] == trained.run.id
    predictions = json.loads((trained.run.path / "val_predictions.json").read_text())["predictions"]
    right = sum(p["label"] == p["predicted"] for p in predictions)
    accuracy = app.metric[0]
    assert accuracy.label == "Accuracy" and accuracy.value == f"{right} of {len(predictions)}"
    assert any(c.value.startswith(f"Accuracy: {right} of {len(predictions)} (") for c in app.caption)
    assert app.metric[2].value == str(len(predictions))

    heatmaps = [trace for spec in chart_specs(app) for trace in spec["data"] if trace["type"] == "heatmap"]
    assert len(heatmaps) == 1
    counts = heatmaps[0]["z"]
    assert sum(map(sum, counts)) == len(predictions)
    assert sum(counts[i][i] for i in range(len(counts))) == right

    app.radio(key="confusion_mode").set_value("share of each true class").run()
    shares = [t for spec in chart_specs(app) for t in spec["data"] if t["type"] == "heatmap"][0]["z"]
    assert all(abs(sum(row) - 1) < 1e-9 for row in shares)

    table = app.dataframe[0].value  # the only table on the page
    assert sorted(table["class"]) == sorted(CLASSES)
    assert list(table["support"]) == [sum(p["label"] == name for p in predictions) for name in table["class"]]
    assert {"precision", "recall", "f1"} <= set(table.columns)

    # The gallery: one caption per picture shown, with the true and predicted classes
    mistakes = len(predictions) - right
    gallery = [c.value for c in app.caption if c.value.startswith((":material/cancel:", ":material/check_circle:"))]
    assert len(gallery) == min(12, mistakes)
    if mistakes:
        assert len(app.image) == len(gallery)  # every mistake shown with its picture
    assert any(spec["layout"].get("annotations") for spec in chart_specs(app))  # the training curves' subplots


def test_evaluate_says_so_for_a_run_without_predictions_and_a_run_still_training(in_trained_home):
    trained = in_trained_home
    # A copy of the finished run without its predictions file (e.g. trained by an older version)
    bare = RunDir.create(trained.runs_dir, dict(trained.run.config))
    bare.update_status(state="finished")
    app = open_app(None, token=trained.token)
    app.query_params["run"] = bare.id
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception
    assert "no validation predictions yet" in all_text(app)
    assert not app.get("plotly_chart") or not any(
        t["type"] == "heatmap" for spec in chart_specs(app) for t in spec["data"])

    running = RunDir.create(trained.runs_dir, dict(trained.run.config))
    running.update_status(state="running")
    try:
        app = open_app(None, token=trained.token)
        app.query_params["run"] = running.id
        app.switch_page("pages/evaluate.py").run()
        assert not app.exception
        assert f"Run `{running.id}` is running, not finished" in all_text(app)
    finally:
        for extra in (bare, running):
            shutil.rmtree(extra.path)  # the shared session keeps exactly one run for the other tests


def test_evaluate_in_a_session_without_runs_points_to_training():
    app = open_app("pages/evaluate.py")
    assert not app.exception
    assert "no finished run in this session yet" in all_text(app)


def test_another_sessions_run_is_not_shown(in_trained_home):
    trained = in_trained_home
    app = open_app(None, token=issue_session_token())
    app.query_params["run"] = trained.run.id
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception
    assert "does not belong to this session" in all_text(app)
    assert not app.metric
