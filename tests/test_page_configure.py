"""The Configure page: catalogue, method with a recommendation, defaults, estimate, draft kept."""

from __future__ import annotations

import json

import pytest

from apptools import open_app, session_with_dataset

from transfer.methods import METHODS


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
    assert "Estimated time" in app.metric[0].label
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
    assert draft["method"] == "finetune" and draft["epochs"] == 3 and draft["train_blocks"] is None


def test_augmentation_preview_and_learning_rate_finder(session_with_data):
    token, workspace = session_with_data
    app = open_app("pages/configure.py", token=token, timeout=180)
    assert len(app.get("image")) >= 3  # augmented versions of one picture per class
    app.selectbox(key="augmentation_features").set_value("strong").run()
    assert not app.exception, app.exception
    app.button(key="lr_find").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    found = app.session_state["lr_found"]
    assert 1e-7 <= found["suggestion"] <= 10
    app.button(key="use_lr").click().run()
    assert app.number_input(key="lr_features").value == pytest.approx(float(f"{found['suggestion']:.1e}"))
    draft = json.loads((workspace / "draft_config.json").read_text())
    assert draft["lr"] == pytest.approx(float(f"{found['suggestion']:.1e}")) and draft["augmentation"] == "strong"
