"""The Configure page's "Start from my own weights": upload a file or pick a finished run, see the
report, and train from it on the Train page."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
import torchvision
from safetensors.torch import save, save_file

from apptools import open_app, session_with_dataset
from waiting import wait_for
from transfer.models.methods import create_model
from transfer.core.runs import FINISHED, RunDir, list_runs

PAGE = "pages/configure.py"


@pytest.fixture
def session_with_data(tiny_dataset):
    return session_with_dataset(tiny_dataset)


@pytest.fixture
def resnet18_bytes() -> bytes:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    return save({k: v.contiguous() for k, v in state.items()})


def draft(workspace) -> dict:
    return json.loads((workspace / "draft_config.json").read_text())


def texts(elements) -> str:
    return " ".join(element.value for element in elements)


def choose_upload(app, name: str, data: bytes):
    app.radio(key="weights_source").set_value("upload").run()
    app.file_uploader(key="weights_file").set_value((name, data, "application/octet-stream"))
    return app.run()


def test_upload_shows_the_report_and_the_run_starts_from_the_file(session_with_data, resnet18_bytes):
    token, workspace = session_with_data
    app = open_app(PAGE, token=token)
    assert "resnet18" not in app.selectbox(key="backbone").options  # offline: no catalogue weights
    app.radio(key="weights_source").set_value("upload").run()
    assert "resnet18" in app.selectbox(key="backbone").options, "own weights need no catalogue weights"
    app.selectbox(key="backbone").set_value("resnet18").run()
    app = choose_upload(app, "scans.safetensors", resnet18_bytes)
    assert not app.exception, app.exception
    assert not app.error, texts(app.error)
    report = texts(app.success)
    assert "scans.safetensors" in report and "Loaded 120 tensors" in report and "1000 classes" in report
    sha = hashlib.sha256(resnet18_bytes).hexdigest()
    chosen = draft(workspace)
    assert chosen["backbone"] == "resnet18"
    assert chosen["initial_weights"]["sha256"] == sha and chosen["initial_weights"]["name"] == "scans.safetensors"
    assert (workspace / "runs" / ".weights" / f"{sha}.safetensors").read_bytes() == resnet18_bytes

    settings = {**chosen, "epochs": 1, "image_size": 32, "device": "cpu"}
    (workspace / "draft_config.json").write_text(json.dumps(settings))
    train = open_app("pages/train.py", token=token)
    assert "Starting from your weights **scans.safetensors**" in train.markdown[0].value
    train.button[0].click().run()  # Start training
    assert not train.exception, train.exception
    run = wait_until_ended(workspace / "runs")
    assert run.state == FINISHED, run.status()
    assert run.config["initial_weights"]["sha256"] == sha
    assert any("Loaded 120 tensors" in e.get("message", "") for e in run.events("info"))


def wait_until_ended(runs_dir, timeout=180) -> RunDir:
    def ended_run() -> RunDir | None:
        runs = list_runs(runs_dir)
        return runs[0] if runs and runs[0].state not in ("queued", "running") else None

    return wait_for(ended_run, "the run to end", timeout=timeout, interval=0.3)


def test_a_file_with_code_is_refused_on_the_page(session_with_data, tmp_path):
    token, workspace = session_with_data
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": RunsCode()}, buffer)
    app = choose_upload(open_app(PAGE, token=token), "evil.pt", buffer.getvalue())
    assert not app.exception, app.exception
    assert "refused and nothing in it ran" in texts(app.error)
    assert not marker.exists()
    assert draft(workspace).get("initial_weights") is None, "training falls back to the catalogue's weights"


def test_uploads_over_the_size_limit_are_refused(session_with_data, resnet18_bytes, monkeypatch):
    token, workspace = session_with_data
    monkeypatch.setenv("TRANSFER_MAX_WEIGHTS_MB", "1")
    app = choose_upload(open_app(PAGE, token=token), "big.safetensors", resnet18_bytes)
    assert not app.exception, app.exception
    assert "weights files up to 1 MB" in texts(app.error)
    assert not (workspace / "runs" / ".weights").exists() or not any((workspace / "runs" / ".weights").iterdir())


def test_a_finished_run_of_the_same_backbone_is_a_starting_point(session_with_data):
    token, workspace = session_with_data
    run = RunDir.create(workspace / "runs", {"dataset": "tiny", "backbone": "efficientnet_lite0",
                                             "method": "features"})
    save_file(create_model("efficientnet_lite0", 3, "scratch").state_dict(), run.weights_path)
    run.update_status(state=FINISHED, best_val_accuracy=0.9)
    app = open_app(PAGE, token=token)
    app.radio(key="weights_source").set_value("run").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="weights_run").value == run.id
    assert "classifier fits these classes" in texts(app.success)
    chosen = draft(workspace)["initial_weights"]
    assert chosen["source"] == "run" and chosen["run"] == run.id
