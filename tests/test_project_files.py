"""A project as one file: the round trip (same predictions, same evaluation), and hostile or
damaged files refused with a sentence and nothing left behind."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from transfer.core.runs import FINISHED, RunDir
from transfer.data.archives import ZipLimits
from transfer.runtime import access, project_files, projects
from transfer.runtime.project_files import ProjectFileError


def project_with_upload(tiny_dataset: Path) -> projects.Project:
    """A project whose data set is an upload inside it, with a correction's working copy."""
    project = projects.new_project("Colours")
    upload = project.uploads_dir / "folders" / "abc"
    shutil.copytree(tiny_dataset, upload / "colours")
    (upload / ".complete").write_text("")
    (upload / ".upload.json").write_text(json.dumps({"name": "colours"}))
    (project.uploads_dir / ".quota.lock").write_text("")
    copy = project.path / "audit" / "working_copy"
    shutil.copytree(upload / "colours", copy / "data")
    (copy / "state.json").write_text(json.dumps({"original": str(upload / "colours"), "edits": []}))
    (project.path / "dataset.json").write_text(json.dumps({"source": str(copy / "data"), "name": "colours",
                                                           "val_fraction": 0.2, "seed": 0}))
    (project.path / "draft_config.json").write_text(json.dumps({"method": "features", "epochs": 2}))
    (project.path / "demos.json").write_text(json.dumps({"tokens": ["secret"]}))
    (project.path / "suggest").mkdir()
    (project.path / "suggest" / "result.json").write_text("{}")
    return project


def fake_finished_run(project: projects.Project) -> RunDir:
    run = RunDir.create(project.runs_dir, {"backbone": "efficientnet_lite0", "method": "features",
                                           "dataset": {"root": str(project.path / "audit" / "working_copy" / "data")}})
    run.update_status(state=FINISHED, best_val_accuracy=0.8)
    run.append_event({"type": "epoch", "epoch": 1, "val_accuracy": 0.8})
    run.write_labels(["blue", "green", "red"])
    run.weights_path.write_bytes(save_safetensors({"head.weight": np.ones((3, 4), dtype=np.float32)}))
    (run.path / "checkpoint.pt").write_bytes(b"\x80\x04pickled")
    (run.path / "exports").mkdir()
    (run.path / "exports" / "model.onnx").write_bytes(b"onnx")
    return run


def sessions() -> set[str]:
    return {p.name for p in projects.projects_root().iterdir()}


def rebuilt(original: Path, target: Path, change) -> Path:
    """A copy of the project file ``original`` with ``change(entries, manifest)`` applied; the
    manifest is written back as changed."""
    with zipfile.ZipFile(original) as archive:
        manifest = json.loads(archive.read(project_files.MANIFEST_NAME))
        entries = {info.filename: archive.read(info) for info in archive.infolist()
                   if info.filename != project_files.MANIFEST_NAME}
    extra = change(entries, manifest) or []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(project_files.MANIFEST_NAME, json.dumps(manifest))
        for name, data in entries.items():
            archive.writestr(name, data)
        for info, data in extra:
            archive.writestr(info, data)
    return target


def listed(manifest: dict, name: str, data: bytes) -> None:
    manifest["parts"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def saved(tiny_dataset, tmp_path):
    project = project_with_upload(tiny_dataset)
    run = fake_finished_run(project)
    result = project_files.save_project(project.id, tmp_path / "colours.transfer.zip")
    return project, run, result


def test_the_file_holds_data_corrections_settings_and_runs_but_no_exports_caches_or_pickles(saved):
    project, run, result = saved
    with zipfile.ZipFile(result.path) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(project_files.MANIFEST_NAME))
    assert manifest["format"] == "transfer-project" and manifest["format_version"] == project_files.FORMAT_VERSION
    assert manifest["name"] == "Colours" and manifest["runs"] == [run.id]
    assert set(manifest["parts"]) == names - {project_files.MANIFEST_NAME}
    prefix = f"project/runs/{run.id}/"
    assert {f"{prefix}model.safetensors", f"{prefix}labels.json", f"{prefix}events.jsonl", f"{prefix}config.json",
            "project/dataset.json", "project/draft_config.json", "project/audit/working_copy/state.json",
            "project/uploads/folders/abc/.complete"} <= names
    assert any(n.startswith("project/audit/working_copy/data/red/") for n in names)
    assert not [n for n in names if n.endswith((".pt", ".onnx", ".lock")) or "/exports/" in n or "suggest" in n
                or n.endswith("demos.json")]
    assert result.runs == 1 and result.bytes == result.path.stat().st_size


def test_round_trip_opens_a_new_project_whose_paths_point_at_itself(saved):
    project, run, result = saved
    opened = project_files.open_project_file(result.path).project
    assert opened.id != project.id and opened.name == "Colours" and opened.named
    choice = json.loads((opened.path / "dataset.json").read_text())
    assert choice["source"] == str(opened.path / "audit" / "working_copy" / "data")
    assert json.loads((opened.path / "audit" / "working_copy" / "state.json").read_text())["original"] \
        == str(opened.path / "uploads" / "folders" / "abc" / "colours")
    [copy] = [r for r in projects.list_projects() if r.id == opened.id]
    copied_run = RunDir(copy.runs_dir / run.id)
    assert copied_run.config["dataset"]["root"] == choice["source"] and copied_run.labels() == ["blue", "green", "red"]
    assert copied_run.weights_path.read_bytes() == run.weights_path.read_bytes()
    summary = projects.summarise(copy)
    assert (summary.classes, summary.pictures, summary.best_accuracy) == (3, 30, 0.8)
    assert not (opened.path / "demos.json").exists() and not (opened.path / "suggest").exists()


def test_data_outside_the_project_travels_inside_the_file(tiny_dataset, tmp_path):
    project = projects.new_project("Outside")
    (project.path / "dataset.json").write_text(json.dumps({"source": str(tiny_dataset), "name": "tiny"}))
    saved = project_files.save_project(project.id, tmp_path / "outside.transfer.zip")
    shutil.rmtree(tiny_dataset)  # another studio does not have the folder
    opened = project_files.open_project_file(saved.path.read_bytes()).project
    source = Path(json.loads((opened.path / "dataset.json").read_text())["source"])
    assert source == opened.path / project_files.IMPORTED_DATA_FOLDER and len(list(source.rglob("*.png"))) == 30


def _bomb(entries, manifest):
    data = b"\0" * 20_000_000
    listed(manifest, "project/uploads/bomb.json", data)
    entries["project/uploads/bomb.json"] = data


def _dotdot(entries, manifest):
    data = b"{}"
    listed(manifest, "project/../../escape.json", data)
    entries["project/../../escape.json"] = data


def _link(entries, manifest):
    info = zipfile.ZipInfo("project/uploads/link.json")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    listed(manifest, info.filename, b"/etc/passwd")
    return [(info, b"/etc/passwd")]


def _pickle(entries, manifest):
    name = next(n for n in entries if n.endswith("model.safetensors")).replace("model.safetensors", "model.pt")
    listed(manifest, name, b"\x80\x04pickle")
    entries[name] = b"\x80\x04pickle"


def _future(entries, manifest):
    manifest["format_version"] = project_files.FORMAT_VERSION + 1


def _missing(entries, manifest):
    del entries[next(n for n in entries if n.endswith("labels.json"))]


def _damaged(entries, manifest):
    name = next(n for n in entries if n.endswith("labels.json"))
    entries[name] = entries[name].replace(b"blue", b"bluf")


def _bad_weights(entries, manifest):
    name = next(n for n in entries if n.endswith("model.safetensors"))
    data = entries[name][:-4] + b"\0\0\0\0\0\0\0\0"
    listed(manifest, name, data)
    entries[name] = data


def _unlisted(entries, manifest):
    entries["project/uploads/extra.json"] = b"{}"


@pytest.mark.parametrize("change, sentence", [
    (_bomb, "zip bomb"),
    (_dotdot, "points outside the project"),
    (_link, "is a link"),
    (_pickle, "only as safetensors"),
    (_future, "saved by a newer Transfer Studio"),
    (_missing, "is incomplete"),
    (_damaged, "is damaged"),
    (_bad_weights, "weights .* are damaged"),
    (_unlisted, "not listed in the file's manifest"),
])
def test_hostile_or_damaged_files_are_refused_with_a_sentence_and_leave_nothing(saved, tmp_path, change, sentence):
    _, _, result = saved
    before = sessions()
    hostile = rebuilt(result.path, tmp_path / "hostile.zip", change)
    with pytest.raises(ProjectFileError, match=sentence):
        project_files.open_project_file(hostile)
    assert sessions() == before, "nothing is left behind"


def test_not_a_project_file_and_over_the_caps(saved, tmp_path):
    _, _, result = saved
    with pytest.raises(ProjectFileError, match="not a readable zip"):
        project_files.open_project_file(b"not a zip at all")
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("cats/1.jpg", b"x")
    with pytest.raises(ProjectFileError, match="no transfer-project.json"):
        project_files.open_project_file(plain.getvalue())
    with pytest.raises(ProjectFileError, match="at most"):
        project_files.open_project_file(result.path, limits=ZipLimits(max_total_bytes=1000))
    with pytest.raises(ProjectFileError, match="parts; at most 3"):
        project_files.open_project_file(result.path, limits=ZipLimits(max_entries=3))
    with pytest.raises(Exception, match="more than a project may store here"):
        project_files.open_project_file(result.path, quota_bytes=1000)
    assert [p for p in projects.projects_root().iterdir() if not access.is_issued_token(p.name)] == []


def test_a_trained_project_predicts_and_evaluates_the_same_after_the_round_trip(tiny_dataset, tmp_path):
    from transfer.analysis.evaluate import load_evaluation
    from transfer.serving.predict import Predictor
    from transfer.training.config import TrainConfig
    from transfer.training.run import train_run

    project = projects.new_project("Trained")
    (project.path / "dataset.json").write_text(json.dumps({"source": str(tiny_dataset), "name": "tiny"}))
    config = TrainConfig.for_method("features", dataset=str(tiny_dataset), image_size=32, device="cpu",
                                    epochs=2, batch_size=8, augmentation="none", precision="fp32")
    run = RunDir.create(project.runs_dir, config.to_dict())
    train_run(run)
    assert run.state == FINISHED
    saved = project_files.save_project(project.id, tmp_path / "trained.transfer.zip")
    opened = project_files.open_project_file(saved.path).project
    copy = RunDir(opened.runs_dir / run.id)
    pictures = sorted(tiny_dataset.rglob("*.png"))[:12]
    before = Predictor.from_run(run.path, fast=False).predict(pictures, top_k=3)
    after = Predictor.from_run(copy.path, fast=False).predict(pictures, top_k=3)
    for old, new in zip(before, after):
        assert new.labels == old.labels
        assert np.allclose(new.probabilities, old.probabilities, atol=1e-6, rtol=0)
        assert old.novelty == pytest.approx(new.novelty, abs=1e-6) if old.novelty is not None else new.novelty is None
    old_eval, new_eval = load_evaluation(run.path), load_evaluation(copy.path)
    assert new_eval.accuracy == old_eval.accuracy and new_eval.macro_f1() == old_eval.macro_f1()
    assert (new_eval.confusion() == old_eval.confusion()).all() and new_eval.per_class() == old_eval.per_class()
    assert new_eval.predictions == old_eval.predictions
