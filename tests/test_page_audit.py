""""Check the labels" on the Data page (AppTest): the audit runs as a queued job in a worker, then the
gallery's fixes (move to the suggested class, move to another, remove, keep) change the
session's working copy only, are listed, can be undone, and the report follows them. The
feature map on the Evaluate page is drawn for a tiny finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptools import open_app, session_with_dataset
from waiting import wait_for

from transfer.analysis import audit
from transfer.core.runs import RunDir
from transfer.core.files import atomic_write_json

PAGE = "pages/data.py"


def counts(app) -> dict[str, tuple[int, int]]:
    table = app.table[0].value
    return {row["Class"]: (row["Training"], row["Validation"]) for _, row in table.iterrows()}


def button(app, label: str, key_part: str = ""):
    return next(b for b in app.button if b.label == label and key_part in (b.key or ""))


def fake_audit(workspace: Path, data: Path, suspects: list[tuple[str, str, str]], outliers=(), pairs=()) -> None:
    """A finished audit of ``data`` as the job leaves it (the job itself is tested below)."""
    folder = workspace / "audit" / "job"
    folder.mkdir(parents=True)
    atomic_write_json(folder / "job.json", {"pid": 0, "source": str(data)})
    atomic_write_json(folder / audit.RESULT_FILE, {
        "root": str(data), "backbone": "efficientnet_lite0", "classes": ["blue", "green", "red"],
        "pictures": 30, "folds": 5, "seconds": 1.0, "feature_seconds": 0.5, "features_cached": 30,
        "features_computed": 0,
        "suspects": [{"path": p, "given": g, "suggested": s, "score": 0.9, "p_given": 0.05, "p_suggested": 0.95,
                      "split": "train", "sha256": ""} for p, g, s in suspects],
        "near_duplicates": list(pairs), "outliers": list(outliers),
        "map": [{"path": "red/red_000.png", "label": "red", "split": "train", "x": 0.0, "y": 1.0, "suspect": True},
                {"path": "blue/blue_000.png", "label": "blue", "split": "val", "x": 1.0, "y": 0.0, "suspect": False}],
    })


def test_move_remove_keep_and_undo_change_only_the_working_copy(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)
    before = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*.png"))
    fake_audit(workspace, tiny_dataset,
               [("red/red_003.png", "red", "green"), ("blue/blue_001.png", "blue", "red"),
                ("green/green_002.png", "green", "blue")],
               outliers=[{"path": "red/red_004.png", "given": "red", "split": "train", "score": 4.0, "sha256": ""}])
    app = open_app(PAGE, token=token)
    assert not app.exception
    assert counts(app)["red"][0] + counts(app)["red"][1] == 10
    assert "Likely mistakes (3)" in [t.label for t in app.tabs]

    button(app, "Move to green", "red/red_003.png").click().run()
    assert not app.exception, app.exception
    copy = workspace / "audit" / "working_copy" / "data"
    assert (copy / "green" / "red_003.png").is_file() and not (copy / "red" / "red_003.png").exists()
    choice = json.loads((workspace / "dataset.json").read_text())
    assert choice["source"] == str(copy)  # the report and the next training run use the corrected set
    assert sum(counts(app)["red"]) == 9 and sum(counts(app)["green"]) == 11
    assert "Likely mistakes (2)" in [t.label for t in app.tabs]

    app.selectbox(key="suspect:blue/blue_001.png:other").set_value("green").run()
    button(app, "Move to the class above", "suspect:blue/blue_001.png").click().run()
    assert (copy / "green" / "blue_001.png").is_file()
    button(app, "Remove", "suspect:green/green_002.png").click().run()
    assert not (copy / "green" / "green_002.png").exists()
    button(app, "Keep as is", "outlier:red/red_004.png").click().run()
    assert (copy / "red" / "red_004.png").is_file()
    assert sum(counts(app)["green"]) == 11  # +red_003 +blue_001 -green_002
    assert "Outliers (0)" in [t.label for t in app.tabs]
    changes = [m.value for m in app.markdown]
    assert "red_003.png moved from red to green" in changes and "green_002.png removed from green" in changes

    undo = [b for b in app.button if b.label == "Undo"]
    assert len(undo) == 4
    for _ in range(4):
        next(b for b in app.button if b.label == "Undo").click().run()
        assert not app.exception
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.png")) == before
    assert {name: sum(pair) for name, pair in counts(app).items()} == {"blue": 10, "green": 10, "red": 10}
    after = sorted(p.relative_to(tiny_dataset).as_posix() for p in tiny_dataset.rglob("*.png"))
    assert after == before  # the user's own folder never changed
    assert "Likely mistakes (3)" in [t.label for t in app.tabs]


def test_the_demo_data_set_is_never_changed(transfer_home):
    from transfer.data.dataset import demo_dataset_path

    demo = demo_dataset_path()
    first_class = sorted(p for p in demo.iterdir() if p.is_dir())[0]
    picture = sorted(first_class.iterdir())[0]
    other = sorted(p for p in demo.iterdir() if p.is_dir())[1].name
    token, workspace = session_with_dataset(demo)
    fake_audit(workspace, demo, [(picture.relative_to(demo).as_posix(), first_class.name, other)])
    app = open_app(PAGE, token=token)
    button(app, f"Move to {other}").click().run()
    assert not app.exception
    assert picture.is_file()
    assert (workspace / "audit" / "working_copy" / "data" / other / picture.name).is_file()


def test_near_duplicate_pairs_can_lose_one_picture(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)
    fake_audit(workspace, tiny_dataset, [], pairs=[{
        "a": "red/red_001.png", "b": "red/red_002.png", "similarity": 0.99, "classes": ["red", "red"],
        "splits": ["train", "val"], "kind": "leakage", "identical": False}])
    app = open_app(PAGE, token=token)
    assert "Near-duplicates (1)" in [t.label for t in app.tabs]
    button(app, "Remove this one", "red/red_002.png").click().run()
    assert not app.exception
    assert not (workspace / "audit" / "working_copy" / "data" / "red" / "red_002.png").exists()
    assert "Near-duplicates (0)" in [t.label for t in app.tabs]


def test_check_the_labels_runs_the_audit_through_the_queue_in_a_worker(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)
    app = open_app(PAGE, token=token)
    button(app, "Check the labels").click().run()
    assert not app.exception
    job = json.loads((workspace / "audit" / "job" / "job.json").read_text())
    assert job["source"] == str(tiny_dataset)
    run = RunDir(job["run"])  # a job of the session, queued like a training run
    assert run.config["job"] == "audit" and run.path.parent == workspace / "jobs"

    def audit_done() -> bool:
        assert not (workspace / "audit" / "job" / audit.ERROR_FILE).exists(), run.log_path.read_text()
        assert run.state in ("queued", "running", "finished"), run.log_path.read_text()
        return (workspace / "audit" / "job" / audit.RESULT_FILE).exists()

    wait_for(audit_done, "the audit's result", timeout=240, interval=0.5)
    started = next(e for e in run.events("info") if "nice" in e)
    assert started["nice"] >= 10 and int(started["threads"]) >= 1  # the workers' priority and thread cap
    app.run()
    assert not app.exception
    labels = [t.label for t in app.tabs]
    assert any(label.startswith("Likely mistakes (") for label in labels)
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    scatter = [t for spec in charts for t in spec["data"] if t.get("mode") == "markers"]
    assert sum(len(t["x"]) for t in scatter if t["name"] in ("red", "green", "blue")) == 30


@pytest.fixture
def trained_home(tmp_path_factory, transfer_home, monkeypatch):
    from test_page_evaluate import shared_trained_session

    trained = shared_trained_session(tmp_path_factory)
    monkeypatch.setenv("TRANSFER_HOME", str(trained.home))
    return trained


def test_evaluate_draws_the_feature_map_of_the_validation_pictures(trained_home):
    trained = trained_home
    app = open_app("pages/evaluate.py", token=trained.token)
    assert not app.exception
    assert any(b.label == "Draw the feature map" for b in app.button)
    assert audit.main(["run-map", str(trained.run.path)]) == 0  # what the button starts, in this process
    app.run()
    predictions = json.loads((trained.run.path / "val_predictions.json").read_text())["predictions"]
    spec = json.loads(next(c for c in app.get("plotly_chart") if c.key == "run_feature_map").proto.spec) \
        if any(c.key == "run_feature_map" for c in app.get("plotly_chart")) else None
    if spec is None:  # older streamlit versions do not expose chart keys
        spec = [json.loads(c.proto.spec) for c in app.get("plotly_chart")][-1]
    points = [t for t in spec["data"] if t.get("mode") == "markers"]
    assert sum(len(t["x"]) for t in points) == len(predictions)
    wrong = sum(p["label"] != p["predicted"] for p in predictions)
    assert sum(symbol == "x" for t in points for symbol in t["marker"]["symbol"]) == wrong


def test_choosing_the_original_again_offers_the_corrected_copy(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)
    fake_audit(workspace, tiny_dataset, [("red/red_003.png", "red", "green")])
    app = open_app(PAGE, token=token)
    button(app, "Move to green").click().run()
    copy = workspace / "audit" / "working_copy" / "data"
    session_file = workspace / "dataset.json"
    session_file.write_text(json.dumps({**json.loads(session_file.read_text()), "source": str(tiny_dataset)}))
    app = open_app(PAGE, token=token)
    assert sum(counts(app)["red"]) == 10  # the original, as chosen
    assert any("earlier fix" in i.value for i in app.info)
    button(app, "Use the corrected copy").click().run()
    assert not app.exception
    assert json.loads(session_file.read_text())["source"] == str(copy)
    assert sum(counts(app)["red"]) == 9
