"""The Train page: start a real run, see progress and curves, stop one, compare the methods,
start with the defaults without visiting Configure, and the per-session limit of runs."""

from __future__ import annotations

import json

import pytest

from apptools import open_app, session_with_dataset
from waiting import wait_for
from transfer.runtime.jobs import JobManager
from transfer.core.runs import list_runs


@pytest.fixture
def configured_session(tiny_dataset):
    """A session that chose the tiny data set and small, quick settings on the Configure page."""
    return session_with_dataset(tiny_dataset, {"backbone": "efficientnet_lite0", "method": "features", "epochs": 3,
                                               "batch_size": 16, "image_size": 64, "feature_views": 1})


def check_counts(workspace) -> list[dict]:
    """Training and validation pictures per class of the session's chosen data set."""
    from transfer.data.dataset import check_dataset

    choice = json.loads((workspace / "dataset.json").read_text())
    counts = check_dataset(choice["source"], val_fraction=choice.get("val_fraction", 0.2)).dataset.counts()
    return [{"train": row["train"], "val": row["val"]} for row in counts.values()]


def wait_for_state(runs_dir, states, timeout=120):
    def runs_in_states() -> list:
        runs = list_runs(runs_dir)
        return runs if runs and all(r.state in states for r in runs) else []

    return wait_for(runs_in_states, lambda: f"runs in {states}: {[r.status() for r in list_runs(runs_dir)]}",
                    timeout=timeout, interval=0.3)


def test_without_a_data_set_the_page_points_to_the_data_page():
    app = open_app("pages/train.py")
    assert not app.exception
    assert "Choose a data set first" in app.info[0].value


def test_a_newcomer_starts_with_the_defaults_without_visiting_configure(tiny_dataset):
    token, workspace = session_with_dataset(tiny_dataset)  # a data set, no settings saved
    app = open_app("pages/train.py", token=token)
    assert not app.exception, app.exception
    assert "Feature transfer" in app.markdown[0].value and "efficientnet_lite0" in app.markdown[0].value
    assert any("default settings" in caption.value for caption in app.caption)
    app.button[0].click().run()  # Start training
    assert not app.exception, app.exception
    runs = list_runs(workspace / "runs")
    assert [r.id for r in runs] == [app.query_params["run"]]
    config = runs[0].config
    assert config["method"] == "features" and config["backbone"] == "efficientnet_lite0"
    assert config["epochs"] == 30  # the method's default
    JobManager(workspace / "runs").cancel(runs[0].id)


def test_the_session_limit_refuses_more_runs_with_a_sentence(configured_session, monkeypatch):
    token, workspace = configured_session
    monkeypatch.setenv("TRANSFER_MAX_QUEUED", "3")
    manager = JobManager(workspace / "runs")
    busy = [manager.submit({"job": "demo", "epochs": 100, "epoch_seconds": 1}) for _ in range(1)]
    app = open_app("pages/train.py", token=token)
    app.button[1].click().run()  # Compare the three methods: 3 more runs, 4 in all
    assert not app.exception, app.exception
    assert "starts 3 runs, but this session already has 1 of its 3" in app.error[0].value
    assert len(list_runs(workspace / "runs")) == 1
    busy += manager.submit_all([{"job": "demo", "epochs": 100, "epoch_seconds": 1}] * 2)
    app.button[0].click().run()  # Start training: a fourth run
    assert "the most it may have at once is 3" in app.error[0].value
    assert len(list_runs(workspace / "runs")) == 3
    for run in busy:
        manager.cancel(run)


def test_start_watch_and_finish_a_run(configured_session):
    token, workspace = configured_session
    app = open_app("pages/train.py", token=token)
    assert not app.exception, app.exception
    assert "Feature transfer" in app.markdown[0].value
    app.button[0].click().run()  # Start training
    assert not app.exception, app.exception
    run_id = app.query_params["run"]
    runs = list_runs(workspace / "runs")
    assert [r.id for r in runs] == [run_id]
    assert runs[0].config["epochs"] == 3 and runs[0].config["image_size"] == 64

    wait_for_state(workspace / "runs", {"finished"})
    app = open_app("pages/train.py", token=token)  # a refreshed page finds the run again
    app.query_params["run"] = run_id
    app.run()
    assert not app.exception, app.exception
    headers = " ".join(h.value for h in app.subheader)
    assert "Lite0 feature transfer, " in headers and "finished" in headers  # the run's readable name
    assert any(run_id in c.value for c in app.caption), "the id is still shown, small"
    validation = sum(row["val"] for row in check_counts(workspace))
    assert app.metric[0].value.endswith(f" of {validation}") and app.metric[1].value != "–"  # a count, not 80.0 %
    assert any(c.value.startswith(f"Validation accuracy: ") and f"of {validation} (" in c.value for c in app.caption)
    bar = app.get("progress")[0].proto
    assert bar.value == 100 and bar.text == "Finished: the head was fit to its optimum"  # a fit, not epochs
    training_time = app.metric[2].value
    assert training_time.endswith(" s")
    table = app.dataframe[0].value
    assert table["training time"].tolist() == [training_time]  # one duration everywhere
    assert any("fit to its optimum on the cached features" in m.value for m in app.markdown)  # no epochs to promise
    assert table["validation accuracy"][0].endswith("%)") and f" of {validation} (" in table["validation accuracy"][0]
    assert len(app.get("plotly_chart")) >= 1
    assert any("This session's runs" in h.value for h in app.subheader)


def test_stop_cancels_a_running_run(configured_session):
    token, workspace = configured_session
    draft = json.loads((workspace / "draft_config.json").read_text())
    draft.update(method="scratch", epochs=50, batch_size=4)
    (workspace / "draft_config.json").write_text(json.dumps(draft))
    app = open_app("pages/train.py", token=token)
    app.button[0].click().run()
    run_id = app.query_params["run"]
    runs_dir = workspace / "runs"
    wait_for(lambda: list_runs(runs_dir)[0].state == "running", "the run to start", timeout=60, interval=0.2)
    app.run()
    stop = [b for b in app.button if b.key == f"stop_{run_id}"]
    assert stop, "a running run shows a Stop button"
    stop[0].click().run()
    assert not app.exception, app.exception
    finished = wait_for_state(runs_dir, {"cancelled"}, timeout=60)
    assert finished[0].id == run_id


def test_compare_trains_the_three_methods_on_the_same_split(configured_session):
    token, workspace = configured_session
    draft = json.loads((workspace / "draft_config.json").read_text())
    app = open_app("pages/train.py", token=token)
    app.button[1].click().run()  # Compare the three methods
    assert not app.exception, app.exception
    runs = list_runs(workspace / "runs")
    assert sorted(r.config["method"] for r in runs) == ["features", "finetune", "scratch"]
    splits = {json.dumps(r.config["dataset"], sort_keys=True) for r in runs}
    assert len(splits) == 1  # one data set, one split
    # The comparison itself is not under test here: make the runs short.
    for run in runs:
        JobManager(workspace / "runs").cancel(run.id)
    assert draft["method"] == "features"


@pytest.mark.parametrize("blocks, said", [(None, "(every block)"), (6, "(the last 6 blocks)")])
def test_the_settings_line_says_how_much_of_the_backbone_fine_tuning_trains(tiny_dataset, blocks, said):
    token, _ = session_with_dataset(tiny_dataset, {"backbone": "efficientnet_lite0", "method": "finetune",
                                                   "epochs": 2, "train_blocks": blocks})
    app = open_app("pages/train.py", token=token)
    assert not app.exception, app.exception
    assert said in app.markdown[0].value and "Fine-tuning" in app.markdown[0].value
