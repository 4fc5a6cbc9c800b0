"""The Configure page: catalogue, method with a recommendation, defaults, estimate, draft kept."""

from __future__ import annotations

import json

import pytest

from apptools import open_app, session_with_dataset
from waiting import wait_for

from transfer.models.methods import METHODS


def rerun_until(app, done, what: str, timeout: float = 180):
    """Run the page again (as its fragments would) until ``done(app)``: jobs run in workers."""

    def done_after_a_rerun():
        app.run()
        assert not app.exception, app.exception
        return done(app)

    if not done(app):
        wait_for(done_after_a_rerun, what, timeout=timeout, interval=0.5)
    return app


def has_estimate(app) -> bool:
    return any("Estimated time" in metric.label for metric in app.metric)


@pytest.fixture
def session_with_data(tiny_dataset):
    return session_with_dataset(tiny_dataset)


def test_without_data_the_page_points_to_the_data_page():
    app = open_app("pages/configure.py")
    assert not app.exception
    assert "Choose a data set first" in app.info[0].value


def test_defaults_recommendation_and_estimate(session_with_data):
    token, workspace = session_with_data
    app = open_app("pages/configure.py", token=token)
    assert not app.exception, app.exception
    assert app.selectbox(key="backbone").value == "efficientnet_lite0"
    assert app.radio(key="method").value == "features"  # 8 pictures per class on a CPU
    assert "Recommended here" in app.info[0].value
    assert app.number_input(key="epochs_features").value == 30
    rerun_until(app, has_estimate, "the time estimate")
    draft = json.loads((workspace / "draft_config.json").read_text())
    assert draft["backbone"] == "efficientnet_lite0" and draft["method"] == "features" and draft["epochs"] == 30


def test_switching_method_switches_defaults_and_offline_backbones_cannot_be_picked(session_with_data):
    token, workspace = session_with_data
    app = open_app("pages/configure.py", token=token)
    options = app.selectbox(key="backbone").options
    assert options[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert "resnet18" not in options  # offline and not cached
    app.radio(key="method").set_value("finetune").run()
    assert not app.exception, app.exception
    assert app.number_input(key="epochs_finetune").value == METHODS["finetune"].defaults["epochs"]
    app.number_input(key="epochs_finetune").set_value(3).run()
    draft = json.loads((workspace / "draft_config.json").read_text())
    assert draft["method"] == "finetune" and draft["epochs"] == 3 and draft["train_blocks"] == 6


def test_augmentation_preview_and_learning_rate_finder(session_with_data):
    token, workspace = session_with_data
    app = open_app("pages/configure.py", token=token, timeout=180)
    assert len(app.get("image")) >= 3  # augmented versions of one picture per class
    app.selectbox(key="augmentation_features").set_value("strong").run()
    assert not app.exception, app.exception
    app.button(key="lr_find").click().run()
    assert not app.exception, app.exception
    rerun_until(app, lambda a: "lr_found" in a.session_state or a.error, "the learning-rate finder")
    assert not app.error, [e.value for e in app.error]
    found = app.session_state["lr_found"]
    assert 1e-7 <= found["suggestion"] <= 10
    app.button(key="use_lr").click().run()
    assert app.number_input(key="lr_features").value == pytest.approx(float(f"{found['suggestion']:.1e}"))
    draft = json.loads((workspace / "draft_config.json").read_text())
    assert draft["lr"] == pytest.approx(float(f"{found['suggestion']:.1e}")) and draft["augmentation"] == "strong"


def test_the_estimate_and_the_finder_run_in_workers_not_in_the_web_server(session_with_data, monkeypatch):
    """The page process cannot measure or train here; the page still gets both results."""
    import transfer.runtime.estimate
    import transfer.training.lr_find

    def not_here(*args, **kwargs):
        raise AssertionError("heavy work ran inside the web server")

    monkeypatch.setattr(transfer.runtime.estimate, "measure_forward_seconds", not_here)
    monkeypatch.setattr(transfer.training.lr_find, "find_learning_rate", not_here)
    token, _ = session_with_data
    app = open_app("pages/configure.py", token=token)
    assert not app.exception, app.exception
    assert not has_estimate(app)
    assert any("Measuring how fast" in info.value for info in app.info)  # the page shows it is waiting
    rerun_until(app, has_estimate, "the time estimate from the worker")
    app.button(key="lr_find").click().run()
    rerun_until(app, lambda a: "lr_found" in a.session_state or a.error, "the learning-rate finder")
    assert not app.error, [e.value for e in app.error]
    assert 1e-7 <= app.session_state["lr_found"]["suggestion"] <= 10
    app = open_app("pages/configure.py", token=token)  # measured once: the next visit knows it at once
    assert has_estimate(app)
