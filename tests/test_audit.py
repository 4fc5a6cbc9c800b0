"""The data audit: flipped labels are found (recall and precision) and listed no more often than
cleanlab flags them, copies across the split are called leakage, a blank picture is an outlier,
the CLI's JSON, and the feature map.

Two generated data sets (train/ and val/ of 3 classes) are audited once each for the module with
the bundled EfficientNet-Lite0 (a few seconds each on 2 cores)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pictures import make_picture
from transfer.analysis import audit
from transfer.cli import main as cli
from transfer.data.dataset import load_dataset

CLASSES = ["red", "green", "blue"]
PER_CLASS = {"train": 16, "val": 6}
FLIPS = 6


def scene(class_index: int, index: int) -> Image.Image:
    """A generated class picture (colour and stripe, learnable by a linear head) with a few shapes
    at random places, so that no two pictures are the same scene."""
    picture = make_picture(class_index, index, (64, 56))
    rng = random.Random(index)
    draw = ImageDraw.Draw(picture)
    for _ in range(3):
        x, y, size = rng.randrange(0, 50), rng.randrange(0, 42), rng.randrange(8, 15)
        shade = rng.choice(["black", "white", "grey"])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + size, y + size), fill=shade)
    return picture


def audited(root: Path, home: Path, **options):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(home))
        patch.setenv("TRANSFER_OFFLINE", "1")
        return audit.audit_dataset(load_dataset(root), seed=0, **options)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> dict:
    """train/ and val/ of the suite's generated class pictures, FLIPS of them filed under a wrong
    class (fixed seed), and one blank picture."""
    root = tmp_path_factory.mktemp("messy") / "data"
    rng = random.Random(7)
    index = 0
    for split, count in PER_CLASS.items():
        for class_index, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                make_picture(class_index, index).save(root / split / name / f"{name}_{index:03d}.png")
                index += 1
    files = sorted((root / "train").glob("*/*.png")) + sorted((root / "val").glob("*/*.png"))
    flipped = set()
    for path in rng.sample(files, FLIPS):
        wrong = rng.choice([c for c in CLASSES if c != path.parent.name])
        target = path.parent.parent / wrong / path.name
        shutil.move(path, target)
        flipped.add(target.relative_to(root).as_posix())
    Image.new("RGB", (48, 40), "white").save(root / "train" / "green" / "blank.png")
    return {"root": root, "flipped": flipped}


@pytest.fixture(scope="module")
def audit_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit_home")


@pytest.fixture(scope="module")
def result(messy, audit_home):
    return audited(messy["root"], audit_home, with_map=True)


@pytest.fixture(scope="module")
def out_of_fold(messy, audit_home, result) -> dict:
    """The out-of-fold probabilities the audit above judged ``messy`` by (same features from the
    cache, same folds and seed), with the labels and the audit's name of each picture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(audit_home))
        patch.setenv("TRANSFER_OFFLINE", "1")
        dataset = load_dataset(messy["root"])
        labels = np.array([dataset.label_index(s.label) for s in dataset.samples])
        features = audit.picture_features(list(dataset.samples), result.backbone).features
    probabilities = audit.out_of_fold_probabilities(features, labels, len(dataset.classes),
                                                    folds=audit.fold_count(labels), seed=0)
    names = [s.path.relative_to(dataset.root).as_posix() for s in dataset.samples]
    return {"probabilities": probabilities, "labels": labels, "names": names}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Distinct scenes (the class pictures above are noise in one colour: alike by design) and one
    resized JPEG copy of a training picture in val/; audited."""
    root = tmp_path_factory.mktemp("scenes") / "data"
    for class_index, name in enumerate(CLASSES):
        for split, count in (("train", 8), ("val", 3)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                scene(class_index, 100 * class_index + 10 * (split == "val") + index).save(
                    root / split / name / f"{index}.png")
    original = scene(0, 999).resize((96, 84))
    original.save(root / "train" / "red" / "shape.png")
    original.resize((72, 63)).save(root / "val" / "red" / "shape_copy.jpg", quality=85)
    return audited(root, tmp_path_factory.mktemp("scenes_home"))


def test_flipped_labels_are_found_first(messy, result):
    flipped = messy["flipped"]
    ranked = [s.path for s in result.suspects]
    found = set(ranked[:len(flipped)]) & flipped
    assert len(found) / len(flipped) >= 0.8, (ranked, flipped)  # precision = recall in the top N
    assert len(set(ranked) & flipped) / max(1, len(ranked)) >= 0.6  # the whole list is mostly real mistakes
    for suspect in result.suspects:
        assert suspect.suggested != suspect.given and 0 < suspect.score <= 1
        assert suspect.p_suggested > suspect.p_given
    assert [s.score for s in result.suspects] == sorted((s.score for s in result.suspects), reverse=True)
    by_path = {s.path: s for s in result.suspects}
    for path in found:  # the suggestion is the class the picture was taken from
        assert by_path[path].suggested != Path(path).parent.name


def test_suspects_are_no_more_than_cleanlab_flags(result, out_of_fold, messy):
    from cleanlab.filter import find_label_issues

    probabilities, labels, names = out_of_fold["probabilities"], out_of_fold["labels"], out_of_fold["names"]
    flagged = find_label_issues(labels, probabilities, filter_by=audit.SUSPECT_FILTER, n_jobs=1)
    flagged_names = {names[i] for i in np.flatnonzero(flagged)}
    listed = [s.path for s in result.suspects]
    assert len(listed) <= int(flagged.sum()) and set(listed) <= flagged_names
    assert len(set(listed) & messy["flipped"]) >= 0.8 * len(messy["flipped"])


def test_suspects_are_ranked_by_margin_and_suggest_the_likeliest_class():
    """Made-up probabilities of 4 classes x 20 pictures: three pictures filed under a class the
    heads find unlikely are listed, clearest first, each with the class the heads prefer."""
    labels = np.repeat(np.arange(4), 20)
    confidence = np.random.default_rng(3).uniform(0.55, 0.85, 80)  # the heads' belief in the given label
    wrong = {5: (2, 0.95), 30: (3, 0.85), 61: (0, 0.75)}  # picture: (class it shows, heads' belief in that)
    shown = labels.copy()
    for picture, (shown_class, belief) in wrong.items():
        shown[picture], confidence[picture] = shown_class, belief
    probabilities = np.repeat(((1 - confidence) / 3)[:, None], 4, axis=1)
    probabilities[np.arange(80), shown] = confidence
    suspects = audit.find_suspects(probabilities, labels)
    assert [picture for picture, _, _ in suspects] == [5, 30, 61]
    assert [suggested for _, suggested, _ in suspects] == [wrong[p][0] for p in (5, 30, 61)]
    for picture, suggested, score in suspects:
        assert score == pytest.approx(probabilities[picture, suggested] - probabilities[picture, labels[picture]])
    assert audit.find_suspects(np.eye(4)[labels], labels) == []  # every label agreed with: nothing to list
    assert audit.find_suspects(np.zeros((0, 4)), np.zeros(0, dtype=int)) == []


def test_the_web_server_does_not_load_cleanlab():
    """The pages import the audit's constants; cleanlab (with pandas and scikit-learn) is loaded
    only by the audit job that needs it."""
    code = "import sys, transfer.analysis.audit, ui.audit_view; print('cleanlab' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout.strip() == "False", done.stderr


def test_a_resized_copy_across_the_split_is_leakage(scenes):
    result = scenes
    pairs = {frozenset((d.a, d.b)): d for d in result.near_duplicates}
    pair = pairs.get(frozenset(("train/red/shape.png", "val/red/shape_copy.jpg")))
    assert pair is not None, result.near_duplicates
    assert pair.kind == "leakage" and not pair.identical and pair.splits in (["train", "val"], ["val", "train"])
    assert pair.similarity >= audit.CANDIDATE_SIMILARITY
    assert len(result.near_duplicates) == 1, result.near_duplicates  # different scenes are not duplicates


def test_a_blank_picture_is_an_outlier(result):
    assert result.outliers and result.outliers[0].path == "train/green/blank.png"


def test_identical_files_are_always_near_duplicates(tmp_path):
    unit = audit.unit_rows(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    pairs = audit.find_near_duplicates(unit, [tmp_path / "missing"] * 4, ["a", "b", "a", "c"])
    assert pairs == [(0, 2, 1.0)]


def test_folds_spread_every_class():
    labels = np.array([0] * 10 + [1] * 5)
    folds = audit.stratified_folds(labels, audit.fold_count(labels), seed=0)
    assert audit.fold_count(labels) == 5
    for label in (0, 1):
        assert set(folds[labels == label]) == set(range(5))


def test_the_feature_map_has_one_point_per_picture(result):
    assert len(result.map) == result.pictures
    assert {p["label"] for p in result.map} == set(CLASSES)
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in result.map)
    assert {p["path"] for p in result.map if p["suspect"]} == {s.path for s in result.suspects}


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_feature_maps_of_tiny_sets(n):
    coordinates = audit.feature_map(np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32))
    assert coordinates.shape == (n, 2) and np.isfinite(coordinates).all()


def test_the_audit_uses_only_free_cores(monkeypatch):
    from transfer.core.machine import cpu_cores

    monkeypatch.setattr(audit.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert audit.free_cores() == cpu_cores()
    monkeypatch.setattr(audit.os, "getloadavg", lambda: (cpu_cores() + 5.0, 0.0, 0.0))
    assert audit.free_cores() == 1


def test_cli_audit_json_has_the_three_lists(messy, result, capsys, transfer_home):
    code = cli.main(["audit", str(messy["root"]), "--json"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(out)
    assert code == 0
    assert {"suspects", "near_duplicates", "outliers"} <= set(report)
    assert [s["path"] for s in report["suspects"]] == [s.path for s in result.suspects]
    assert {"path", "given", "suggested", "score"} <= set(report["suspects"][0])


def test_cli_audit_refuses_a_missing_folder(tmp_path, capsys):
    assert cli.main(["audit", str(tmp_path / "nowhere"), "--json"]) == 2
    assert "does not exist" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_audit_job_writes_its_result_and_errors_as_sentences(messy, tmp_path):
    assert audit.main(["dataset", str(tmp_path / "nowhere"), str(tmp_path / "job")]) == 2
    assert (tmp_path / "job" / audit.ERROR_FILE).is_file()
    one_class = tmp_path / "one"
    (one_class / "red").mkdir(parents=True)
    for i in range(3):
        make_picture(0, i).save(one_class / "red" / f"{i}.png")
    assert audit.main(["dataset", str(one_class), str(tmp_path / "job2")]) == 2
    error = json.loads((tmp_path / "job2" / audit.ERROR_FILE).read_text())["error"]
    assert "class" in error
