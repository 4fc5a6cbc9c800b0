"""Starting from your own weights: reading files safely, the fit report, the store, training from
a file and from a finished run (``transfer train --weights``), and the feature cache's key.

Weights files are saved here from randomly initialised torchvision models: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from transfer.models.backbones import (
    BackboneError,
    UnsafeWeightsFile,
    WeightsDoNotFit,
    read_weights_file,
)
from transfer.cli.main import main
from transfer.training.config import ConfigError, TrainConfig
from transfer.models.features import feature_key
from transfer.models.backbones import get_backbone
from transfer.core.runs import FINISHED, list_runs
from transfer.models.weights import WeightsError, check_weights, locate, store_file

FAST = ["--epochs", "1", "--image-size", "32", "--device", "cpu", "--batch-size", "16"]


def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}


@pytest.fixture
def resnet18_file(tmp_path) -> Path:
    path = tmp_path / "my_resnet18.safetensors"
    save_file(resnet18_state(), path)
    return path


class RunsCode:
    """Unpickling this would create ``marker``: the proof that code in a file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- reading files safely


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, tiny_dataset, capsys, legacy):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": resnet18_state(), "extra": RunsCode(marker)}, evil,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeWeightsFile, match="refused and nothing in it ran"):
        read_weights_file(evil)
    runs = tmp_path / "runs"
    code = main(["train", str(tiny_dataset), "--backbone", "resnet18", "--weights", str(evil),
                 "--runs-dir", str(runs), "--json", *FAST])
    assert code == 2 and "could run code" in last_json(capsys)["error"]
    assert main(["weights", str(evil), "--backbone", "resnet18", "--json"]) == 2
    assert "refused" in last_json(capsys)["error"]
    assert not marker.exists(), "the pickled code must never run"
    assert not list_runs(runs), "no run is created from a refused file"


def test_torchscript_programs_are_refused(tmp_path):
    path = tmp_path / "program.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsafeWeightsFile, match="TorchScript"):
        read_weights_file(path)


def test_common_checkpoint_layouts_and_formats_are_read(tmp_path):
    state = resnet18_state()
    layouts = {
        "plain.pth": state,
        "lightning.ckpt": {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}},
        "nested.pt": {"model": {"state_dict": {f"module.{k}": v for k, v in state.items()}}, "optimizer": {}},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in state.items()},
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "renamed.pt")  # a safetensors file with the wrong suffix: read by content
    for name in [*layouts, "old.pt", "renamed.pt"]:
        report = check_weights(tmp_path / name, "resnet18", 3)
        assert len(report.loaded) == len(state) - 2, name  # everything but the 1000-class classifier
        assert not (report.missing or report.unexpected or report.mismatched), name
        assert "1000 classes" in report.head and "3" in report.head


def test_a_file_that_is_not_weights_gets_a_sentence(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(BackboneError, match="not a weights file"):
        read_weights_file(path)


# --------------------------------------------------------------------------- the report


def test_missing_unexpected_and_mis_shaped_keys_are_reported(tmp_path, capsys):
    state = resnet18_state()
    state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 1, 1)  # another shape
    del state["layer4.1.bn2.bias"]
    state["projector.weight"] = torch.zeros(8, 512)
    path = tmp_path / "partly.safetensors"
    save_file(state, path)
    report = check_weights(path, "resnet18", 2)
    assert report.mismatched == [("layer4.0.conv1.weight", (512, 256, 1, 1), (512, 256, 3, 3))]
    assert report.missing == ["layer4.1.bn2.bias"] and report.unexpected == ["projector.weight"]
    assert main(["weights", str(path), "--backbone", "resnet18", "--classes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "layer4.0.conv1.weight (512, 256, 1, 1) vs (512, 256, 3, 3)" in printed
    assert "1 missing from the file" in printed and "projector.weight" in printed


def test_weights_of_another_architecture_stop_with_a_sentence(tmp_path, tiny_dataset, capsys):
    path = tmp_path / "mobilenet.safetensors"
    save_file(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(WeightsDoNotFit, match="made for another architecture"):
        check_weights(path, "resnet18", 3)
    runs = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--backbone", "resnet18", "--weights", str(path),
                 "--runs-dir", str(runs), "--json", *FAST]) == 2
    assert "of the 100 tensors of resnet18" in last_json(capsys)["error"]
    assert not list_runs(runs)


def test_scratch_cannot_start_from_weights(resnet18_file):
    spec = {"name": "w.safetensors", "sha256": "0" * 64, "path": str(resnet18_file)}
    with pytest.raises(ConfigError, match="from scratch"):
        TrainConfig.for_method("scratch", dataset="data", initial_weights=spec)
    with pytest.raises(ConfigError, match="SHA-256"):
        TrainConfig.for_method("features", dataset="data", initial_weights={**spec, "sha256": "x"})


# --------------------------------------------------------------------------- the store


def test_the_store_keeps_a_copy_named_by_content_and_finds_it_again(tmp_path, resnet18_file):
    spec = store_file(resnet18_file, tmp_path / "runs").to_dict()
    stored = Path(spec["path"])
    assert stored.parent == (tmp_path / "runs" / ".weights").resolve()
    assert stored.name == f"{sha256(resnet18_file)}.safetensors" and spec["sha256"] == sha256(resnet18_file)
    resnet18_file.write_bytes(b"overwritten by its owner")
    assert locate(spec) == stored, "the run reads its own copy, whatever happens to the original"
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "runs", moved)
    assert locate(spec, moved) == moved / ".weights" / stored.name
    (moved / ".weights" / stored.name).write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="has changed"):
        locate(spec, moved)


# --------------------------------------------------------------------------- training from weights


def test_a_torchvision_safetensors_file_trains_offline(tmp_path, tiny_dataset, resnet18_file, capsys):
    runs = tmp_path / "runs"
    code = main(["train", str(tiny_dataset), "--backbone", "resnet18", "--weights", str(resnet18_file),
                 "--runs-dir", str(runs), "--json", *FAST])
    result = last_json(capsys)
    assert code == 0, result
    assert result["state"] == FINISHED and result["backbone"] == "resnet18"
    assert result["initial_weights"] == {"name": "my_resnet18.safetensors", "sha256": sha256(resnet18_file),
                                         "source": "file"}
    run_dir = Path(result["run_dir"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["initial_weights"]["sha256"] == sha256(resnet18_file)
    info = json.loads((run_dir / "model.json").read_text())
    assert info["initial_weights"] == result["initial_weights"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    report = next(e for e in events if e.get("initial_weights"))
    assert "Loaded 120 tensors" in report["message"] and report["weights_report"]["loaded"] == 120
    trained, started = load_file(str(run_dir / "model.safetensors")), load_file(str(resnet18_file))
    assert torch.equal(trained["layer3.0.conv1.weight"], started["layer3.0.conv1.weight"])  # frozen backbone


def test_chaining_two_runs(tmp_path, tiny_dataset, capsys):
    runs = tmp_path / "runs"
    assert main(["train", str(tiny_dataset), "--runs-dir", str(runs), "--json", *FAST]) == 0
    first = Path(last_json(capsys)["run_dir"])
    assert main(["train", str(tiny_dataset), "--backbone", "resnet18", "--weights", str(first),
                 "--runs-dir", str(runs), "--json", *FAST]) == 2
    assert "trained from efficientnet_lite0" in last_json(capsys)["error"]

    assert main(["train", str(tiny_dataset), "--weights", str(first / "model.safetensors"), "--runs-dir", str(runs),
                 "--method", "finetune", "--json", *FAST]) == 0
    second = last_json(capsys)
    assert second["state"] == FINISHED and second["backbone"] == "efficientnet_lite0"
    assert second["initial_weights"]["source"] == "run" and second["initial_weights"]["run"] == first.name
    events = [json.loads(line) for line in (Path(second["run_dir"]) / "events.jsonl").read_text().splitlines()]
    report = next(e for e in events if e.get("initial_weights"))
    assert "classifier fits these classes" in report["message"]  # same three classes: the head is kept too
    probe = next(e for e in events if "probe_features_computed" in e)
    assert probe["probe_features_computed"] > 0, "features of other weights are never taken from the cache"


def test_the_feature_cache_key_follows_the_weights():
    prep = get_backbone("efficientnet_lite0").preprocessing
    catalogue = feature_key("efficientnet_lite0", prep, 0, "light")
    mine = feature_key("efficientnet_lite0", prep, 0, "light", weights_sha256="a" * 64)
    other = feature_key("efficientnet_lite0", prep, 0, "light", weights_sha256="b" * 64)
    assert len({json.dumps(k, sort_keys=True) for k in (catalogue, mine, other)}) == 3
    assert mine == feature_key("efficientnet_lite0", prep, 0, "light", weights_sha256="a" * 64)


def test_a_run_from_weights_resumes_from_its_stored_copy(tmp_path, tiny_dataset, resnet18_file, monkeypatch):
    from transfer.core.runs import Cancelled, RunDir
    from transfer.training.run import Trainer, train_run

    spec = store_file(resnet18_file, tmp_path / "runs").to_dict()
    # A hidden layer, so the head trains for epochs (a plain linear head is fit at once).
    config = TrainConfig.for_method("features", dataset=str(tiny_dataset), backbone="resnet18", epochs=2,
                                    image_size=32, device="cpu", batch_size=16, initial_weights=spec, hidden=8)
    run = RunDir.create(tmp_path / "runs", config.to_dict())
    original = Trainer.train_one_epoch

    def cancelled_in_epoch_two(self, epoch):
        if epoch == 2:
            raise Cancelled()
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", cancelled_in_epoch_two)
    with pytest.raises(Cancelled):
        train_run(run)
    monkeypatch.setattr(Trainer, "train_one_epoch", original)
    resnet18_file.unlink()  # the original is gone: the run reads its own stored copy
    train_run(run)
    assert run.state == FINISHED
    features = [e for e in run.events("info") if "features_computed" in e]
    assert features[0]["features_computed"] > 0 and features[-1]["features_computed"] == 0, \
        "the same weights find their features in the cache"
