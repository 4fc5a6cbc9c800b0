""""None of these" (transfer.models.novelty): the reference and its thresholds, a tiny real run where
pictures of an unseen kind come back unknown and training-like ones do not, every method
storing a reference, exports answering ``novelty``, `transfer predict` and its
``--unknown-threshold``, runs trained before, and demos keeping the reference and a strictness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.cli.main import main
from transfer.models.novelty import (MAX_REFERENCE, REFERENCE_FILE, STRICTNESS, build_reference, choose_reference,
                              describe_answer, held_out_distances, load_reference, neighbour_count, novelty_info,
                              unknown_threshold, validation_novelty)

SIZE = 96


# --------------------------------------------------------------------------- generated kinds of pictures


def stripes(index: int, size: int = SIZE) -> Image.Image:
    """Light and dark horizontal stripes, period and colours varying with ``index``."""
    rng = np.random.default_rng(index)
    period = int(rng.integers(6, 16))
    rows = (np.arange(size) + int(rng.integers(0, period))) // (period // 2) % 2 == 0
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[rows], pixels[~rows] = rng.integers(200, 256, 3), rng.integers(0, 60, 3)
    return Image.fromarray(pixels)


def dots(index: int, size: int = SIZE) -> Image.Image:
    """Light round dots on a dark ground, placed by ``index``."""
    rng = np.random.default_rng(10_000 + index)
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = rng.integers(0, 60, 3)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(8, 14))):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(4, 10)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(200, 256, 3)
    return Image.fromarray(pixels)


def solid(index: int, size: int = SIZE) -> Image.Image:
    return Image.new("RGB", (size, size), tuple(int(v) for v in np.random.default_rng(index).integers(0, 256, 3)))


def write_kinds(root: Path, count: int) -> Path:
    for name, make in (("stripes", stripes), ("dots", dots)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            make(index).save(root / name / f"{name}_{index:03d}.png")
    return root


def train(dataset: Path, runs: Path, method: str, image_size: int):
    from transfer.training.config import TrainConfig
    from transfer.core.runs import RunDir
    from transfer.training.run import train_run

    config = TrainConfig.for_method(method, dataset=str(dataset), image_size=image_size, device="cpu", epochs=1,
                                    batch_size=8, augmentation="none", precision="fp32")
    run = RunDir.create(runs, config.to_dict())
    train_run(run)
    return run


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    """A features run telling stripes from dots (24 pictures of each)."""
    root = tmp_path_factory.mktemp("kinds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_HOME", str(root / "home"))
        patch.setenv("TRANSFER_OFFLINE", "1")
        return train(write_kinds(root / "data", 24), root / "runs", "features", SIZE)


# --------------------------------------------------------------------------- the reference (pure)


def clusters(count: int, seed: int, classes: int = 4, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Feature-like vectors: non-negative (as after a ReLU), one noisy centre per class."""
    rng = np.random.default_rng(seed)
    centres = np.abs(np.random.default_rng(99).normal(size=(classes, dim)))
    targets = rng.integers(0, classes, count)
    return np.abs(centres[targets] + rng.normal(scale=0.6, size=(count, dim))).astype(np.float32), targets


def test_thresholds_keep_at_least_their_share_of_pictures_drawn_like_the_training_ones():
    # Drawn from exactly the training pictures' distribution (kinder than real new photos),
    # cross-fitting errs on the side of keeping: never fewer than promised, a few points more.
    train_features, targets = clusters(1500, seed=1)
    reference = build_reference(train_features, targets)
    held_out = reference.score(clusters(3000, seed=2)[0])
    for name, keep in STRICTNESS.items():
        kept = float((held_out <= reference.thresholds[name]).mean())
        assert keep - 0.01 < kept < keep + 0.06, (name, kept)
    assert reference.thresholds["relaxed"] > reference.thresholds["normal"] > reference.thresholds["strict"]


def test_unrelated_vectors_score_far_above_the_threshold():
    train_features, targets = clusters(400, seed=3)
    reference = build_reference(train_features, targets)
    strangers = np.abs(np.random.default_rng(4).normal(size=(50, 64))).astype(np.float32)  # no class centre
    assert (reference.score(strangers) > reference.thresholds["relaxed"]).all()
    assert reference.score(train_features[:5] * 7.0).max() < reference.thresholds["normal"]  # scale does not matter


def test_reference_is_capped_class_by_class():
    targets = np.array([0] * 5000 + [1] * 40 + [2] * 3000)
    chosen = choose_reference(targets)
    assert len(chosen) == MAX_REFERENCE and len(set(chosen.tolist())) == MAX_REFERENCE
    counts = np.bincount(targets[chosen])
    assert counts[1] == 40 and abs(int(counts[0]) - int(counts[2])) <= 1  # the small class is kept whole
    assert neighbour_count(targets) == 10 and neighbour_count([0, 0, 0, 1, 1, 1]) == 1


def test_feature_maps_are_pooled_and_tiny_sets_have_no_reference():
    maps = np.random.default_rng(0).random((12, 8, 3, 3)).astype(np.float32)
    reference = build_reference(maps, np.arange(12) % 2)
    assert reference.vectors.shape == (12, 8)
    assert np.allclose(reference.score(maps), reference.score(maps.mean(axis=(2, 3))))
    assert build_reference(maps[:2], [0, 1]) is None


def test_unknown_threshold_settings():
    novelty = {"thresholds": {"relaxed": 0.3, "normal": 0.2, "strict": 0.1}}
    assert unknown_threshold(novelty, "strict") == 0.1 and unknown_threshold(novelty, "0.25") == 0.25
    assert unknown_threshold(novelty, "off") is None and unknown_threshold(None, "normal") is None
    for wrong in ("sometimes", "5"):
        with pytest.raises(ValueError, match="unknown-threshold"):
            unknown_threshold(novelty, wrong)
    said = describe_answer({"label": "dogs", "probability": 0.12, "unknown": True})
    assert said.startswith("None of these") and "closest: dogs 12%" in said


# --------------------------------------------------------------------------- a real run


def test_unseen_kinds_come_back_unknown_and_training_like_pictures_do_not(kinds_run):
    from transfer.serving.predict import Predictor

    info = novelty_info(kinds_run.path)
    assert info and (kinds_run.path / REFERENCE_FILE).is_file()
    assert set(info["thresholds"]) == set(STRICTNESS) and "cross-fitting" in info["calibration"]
    predictor = Predictor.from_run(kinds_run.path)
    assert predictor.fast and predictor.novelty is not None
    like = predictor.predict([stripes(500 + i) for i in range(10)] + [dots(500 + i) for i in range(10)], 2)
    strangers = predictor.predict([solid(i) for i in range(6)], 2)
    assert all(p.unknown for p in strangers), [p.novelty for p in strangers]
    assert sum(not p.unknown for p in like) >= 14, [p.novelty for p in like]  # 95 % of a tiny set's worth
    assert min(p.novelty for p in strangers) > max(sorted(p.novelty for p in like)[:14])
    relaxed = predictor.predict([stripes(500 + i) for i in range(10)], 1, unknown_threshold="relaxed")
    assert sum(p.unknown for p in relaxed) <= sum(p.unknown for p in like[:10])
    assert not any(p.unknown for p in predictor.predict([solid(0)], 1, unknown_threshold="off"))


def test_the_trainer_scores_its_validation_pictures_as_prediction_does(kinds_run):
    from transfer.serving.predict import Predictor

    saved = json.loads((kinds_run.path / "val_predictions.json").read_text())["predictions"]
    recorded = validation_novelty(kinds_run.path)
    assert recorded is not None and len(recorded) == len(saved)
    data = Path(json.loads((kinds_run.path / "config.json").read_text())["dataset"])
    predicted = Predictor.from_run(kinds_run.path).predict([data / item["path"] for item in saved], 1)
    assert [p.novelty for p in predicted] == pytest.approx(recorded, abs=1e-3)


@pytest.mark.parametrize("method", ["finetune", "scratch"])
def test_every_method_keeps_a_reference(method, tmp_path):
    from transfer.serving.predict import Predictor

    run = train(write_kinds(tmp_path / "data", 8), tmp_path / "runs", method, 32)
    info = novelty_info(run.path)
    assert info and info["reference_pictures"] == info["training_pictures"] == 12
    reference = load_reference(run.path)
    assert reference.vectors.shape[0] == 12 and np.allclose(np.linalg.norm(reference.vectors, axis=1), 1, atol=1e-5)
    saved = json.loads((run.path / "val_predictions.json").read_text())["predictions"]
    data = tmp_path / "data"
    predicted = Predictor.from_run(run.path).predict([data / item["path"] for item in saved], 1)
    assert [p.novelty for p in predicted] == pytest.approx(validation_novelty(run.path), abs=1e-3)


# --------------------------------------------------------------------------- exports and the command line


def test_exports_answer_novelty_beside_the_probabilities(kinds_run, tmp_path):
    import io

    import torch

    from transfer.serving.export import export_run, onnx_session
    from transfer.data.augment import eval_transform
    from transfer.serving.predict import Predictor

    session = onnx_session(export_run(kinds_run.path, "onnx").path)
    assert [o.name for o in session.get_outputs()] == ["probabilities", "novelty"]
    predictor = Predictor.from_run(kinds_run.path)
    batch = torch.stack([eval_transform(picture, predictor.preprocessing) for picture in (solid(1), dots(3))])
    probabilities, novelty = torch.jit.load(io.BytesIO(export_run(kinds_run.path, "torchscript").path.read_bytes()))(batch)
    expected = predictor.predict([solid(1), dots(3)], 2)
    assert novelty.tolist() == pytest.approx([p.novelty for p in expected], abs=1e-4)
    assert probabilities.shape == (2, 2)


def test_transfer_predict_says_none_of_these(kinds_run, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    solid(2).save(pictures / "solid.png")
    stripes(600).save(pictures / "stripes.png")
    assert main(["predict", str(kinds_run.path), str(pictures), "--json", "--csv", str(tmp_path / "out.csv")]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {Path(r["file"]).name: r for r in answer["predictions"]}
    assert rows["solid.png"]["unknown"] is True and rows["solid.png"]["novelty"] > 0.3
    assert rows["stripes.png"]["unknown"] is False and "note" not in answer
    header, *lines = (tmp_path / "out.csv").read_text().splitlines()
    assert header.split(",")[3:5] == ["unknown", "novelty"] and len(lines) == 2

    assert main(["predict", str(kinds_run.path), str(pictures)]) == 0
    table = capsys.readouterr().out
    assert "None of these (closest:" in table and "novelty" in table
    assert main(["predict", str(kinds_run.path), str(pictures), "--unknown-threshold", "off", "--json"]) == 0
    assert not any(r["unknown"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"])
    assert main(["predict", str(kinds_run.path), str(pictures), "--unknown-threshold", "2", "--json"]) == 0
    assert not any(r["unknown"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"])
    assert main(["predict", str(kinds_run.path), str(pictures), "--unknown-threshold", "often"]) != 0
    assert "--unknown-threshold takes a number" in capsys.readouterr().err


def test_a_run_trained_before_keeps_working_and_says_so_once(kinds_run, tmp_path, capsys):
    old = tmp_path / "old_run"
    shutil.copytree(kinds_run.path, old, ignore=shutil.ignore_patterns("exports", REFERENCE_FILE))
    info = json.loads((old / "model.json").read_text())
    info.pop("novelty")
    (old / "model.json").write_text(json.dumps(info))
    solid(2).save(tmp_path / "solid.png")
    solid(3).save(tmp_path / "solid3.png")
    assert main(["predict", str(old), str(tmp_path / "solid.png"), str(tmp_path / "solid3.png"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["unknown"], r["novelty"]) for r in answer["predictions"]] == [(False, None), (False, None)]
    assert "trained before" in answer["note"]
    assert main(["predict", str(old), str(tmp_path / "solid.png"), str(tmp_path / "solid3.png")]) == 0
    assert capsys.readouterr().out.count("trained before") == 1


def test_a_demo_keeps_the_reference_and_its_strictness(kinds_run):
    from transfer.serving.predict import Predictor
    from transfer.serving.share import DemoStore, ShareError

    store = DemoStore()
    token, _ = store.create(kinds_run.path, strictness="strict")
    opened = store.open(token)
    assert opened.strictness == "strict" and (opened.folder / REFERENCE_FILE).is_file()
    predictor = Predictor.from_run(opened.folder)
    assert predictor.novelty is not None and predictor.predict(solid(4), 1, unknown_threshold="strict")[0].unknown
    with pytest.raises(ShareError, match="Strictness"):
        store.create(kinds_run.path, strictness="lenient")
    store.revoke(token)
    assert not (opened.folder / REFERENCE_FILE).exists()


def test_tiny_sets_still_get_thresholds_when_a_class_cannot_be_split():
    vectors = np.eye(4, dtype=np.float32)[:3] + 0.1  # three pictures, one per class
    reference = build_reference(vectors, [0, 1, 2])
    assert reference is not None and np.isfinite(list(reference.thresholds.values())).all()
    assert held_out_distances(vectors, [0, 0, 0], 1).shape == (3,)  # one class in three parts
