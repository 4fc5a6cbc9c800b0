"""Evaluation of a run from its validation predictions: hand-made cases with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from transfer.analysis.evaluate import (
    Evaluation,
    EvaluationNotReady,
    ValPrediction,
    cached_picture,
    confusion_matrix,
    load_evaluation,
    normalise_rows,
    per_class_metrics,
    picture_location,
    prediction_thumbnail,
    top_losses,
)

CLASSES = ["cat", "dog", "fox"]


def item(path: str, label: str, predicted: str, probabilities: list[float], sha256: str = "") -> dict:
    return {"path": path, "sha256": sha256 or f"{abs(hash(path)):064x}"[:64], "label": label, "predicted": predicted,
            "probabilities": probabilities}


# Ten pictures: cat 4 (3 right, 1 called dog), dog 4 (2 right, 1 cat, 1 fox), fox 2 (2 right).
PREDICTIONS = [
    item("val/cat/0.png", "cat", "cat", [0.9, 0.05, 0.05]),
    item("val/cat/1.png", "cat", "cat", [0.8, 0.1, 0.1]),
    item("val/cat/2.png", "cat", "cat", [0.6, 0.3, 0.1]),
    item("val/cat/3.png", "cat", "dog", [0.2, 0.7, 0.1]),
    item("val/dog/0.png", "dog", "dog", [0.1, 0.8, 0.1]),
    item("val/dog/1.png", "dog", "dog", [0.3, 0.5, 0.2]),
    item("val/dog/2.png", "dog", "cat", [0.95, 0.04, 0.01]),
    item("val/dog/3.png", "dog", "fox", [0.1, 0.3, 0.6]),
    item("val/fox/0.png", "fox", "fox", [0.0, 0.1, 0.9]),
    item("val/fox/1.png", "fox", "fox", [0.1, 0.2, 0.7]),
]


@pytest.fixture
def evaluation() -> Evaluation:
    return Evaluation.from_dict({"classes": CLASSES, "epoch": 3, "predictions": PREDICTIONS})


def test_confusion_matrix_counts_true_rows_against_predicted_columns(evaluation):
    expected = np.array([[3, 1, 0], [1, 2, 1], [0, 0, 2]])
    assert np.array_equal(evaluation.confusion(), expected)
    assert np.array_equal(confusion_matrix([0, 0, 2], [1, 1, 0], 3), [[0, 2, 0], [0, 0, 0], [1, 0, 0]])


def test_normalised_rows_sum_to_one_and_empty_rows_stay_zero(evaluation):
    normalised = evaluation.confusion(normalised=True)
    assert np.allclose(normalised.sum(axis=1), 1.0)
    assert normalised[1].tolist() == [0.25, 0.5, 0.25]
    assert normalise_rows(np.array([[0, 0], [1, 3]])).tolist() == [[0.0, 0.0], [0.25, 0.75]]


def test_accuracy_precision_recall_f1_per_class(evaluation):
    assert evaluation.accuracy == pytest.approx(0.7)
    assert evaluation.epoch == 3
    cat, dog, fox = evaluation.per_class()
    # cat: called cat 4 times (3 right) and has 4 pictures (3 found)
    assert (cat.precision, cat.recall, cat.f1, cat.support, cat.predicted) == (0.75, 0.75, 0.75, 4, 4)
    # dog: called dog 3 times (2 right), 4 pictures (2 found): F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7
    assert dog.precision == pytest.approx(2 / 3) and dog.recall == 0.5 and dog.f1 == pytest.approx(4 / 7)
    # fox: called fox 3 times (2 right), 2 pictures (both found): F1 = 2 * (2/3 * 1) / (5/3) = 0.8
    assert fox.precision == pytest.approx(2 / 3) and fox.recall == 1.0 and fox.f1 == pytest.approx(0.8)
    assert evaluation.macro_f1() == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)


def test_classes_never_predicted_or_without_pictures_have_no_made_up_numbers():
    matrix = np.array([[2, 0, 1], [0, 0, 0], [1, 0, 0]])  # "b" has no pictures and is never predicted
    a, b, c = per_class_metrics(matrix, ["a", "b", "c"])
    assert (b.precision, b.recall, b.f1) == (None, None, None)
    # "c": one picture, called "a"; "c" was predicted once, wrongly: precision 0, recall 0, F1 0
    assert (c.precision, c.recall, c.f1) == (0.0, 0.0, 0.0)
    # a class with pictures that is never predicted: no precision, recall 0, F1 0
    only_missed = per_class_metrics(np.array([[1, 0], [1, 0]]), ["x", "y"])[1]
    assert (only_missed.precision, only_missed.recall, only_missed.f1) == (None, 0.0, 0.0)


def test_top_losses_puts_the_most_confident_mistakes_first(evaluation):
    worst = evaluation.top_losses(3)
    # dog called cat with p(dog) = 0.04, then dog/3 with p(dog) = 0.3 and cat/3 with p(cat) = 0.2
    assert [p.path for p in worst] == ["val/dog/2.png", "val/cat/3.png", "val/dog/3.png"]
    assert worst[0].loss == pytest.approx(-math.log(0.04))
    assert worst[0].predicted_probability == pytest.approx(0.95)
    assert evaluation.label(worst[0].true_index) == "dog" and evaluation.label(worst[0].predicted_index) == "cat"
    assert all(not p.correct for p in evaluation.top_losses(4, mistakes_only=True))
    assert len(evaluation.top_losses(100, mistakes_only=True)) == 3
    assert len(evaluation.top_losses(100)) == 10


def test_top_losses_of_a_certain_mistake_is_finite_and_ties_keep_file_order():
    certain = ValPrediction("a", "", 0, 1, (0.0, 1.0))
    tie_1, tie_2 = ValPrediction("b", "", 0, 0, (0.5, 0.5)), ValPrediction("c", "", 1, 1, (0.5, 0.5))
    assert math.isfinite(certain.loss)
    assert [p.path for p in top_losses([tie_1, certain, tie_2], 3)] == ["a", "b", "c"]


def test_load_evaluation_explains_missing_damaged_and_empty_predictions(tmp_path):
    with pytest.raises(EvaluationNotReady, match="written when training finishes"):
        load_evaluation(tmp_path)
    (tmp_path / "val_predictions.json").write_text("{not json")
    with pytest.raises(EvaluationNotReady, match="damaged"):
        load_evaluation(tmp_path)
    (tmp_path / "val_predictions.json").write_text(json.dumps({"classes": CLASSES, "predictions": [
        item("x.png", "cat", "cat", [1.0, 0.0])]}))
    with pytest.raises(EvaluationNotReady, match="expected format"):
        load_evaluation(tmp_path)
    (tmp_path / "val_predictions.json").write_text(json.dumps({"classes": CLASSES, "predictions": []}))
    with pytest.raises(EvaluationNotReady, match="no validation pictures"):
        load_evaluation(tmp_path)
    (tmp_path / "val_predictions.json").write_text(json.dumps({"classes": CLASSES, "predictions": PREDICTIONS}))
    assert load_evaluation(tmp_path).count == 10


def test_pictures_are_found_under_the_data_set_root_or_in_the_decode_cache(tmp_path, transfer_home):
    root = tmp_path / "data"
    (root / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (300, 200), (200, 10, 10)).save(root / "val" / "cat" / "0.png")
    found = ValPrediction("val/cat/0.png", "ab" * 32, 0, 0, (1.0,))
    assert picture_location({"dataset": {"root": str(root)}}, found) == root / "val" / "cat" / "0.png"
    assert picture_location({"dataset": str(root)}, found) == root / "val" / "cat" / "0.png"
    small = prediction_thumbnail({"dataset": str(root)}, found, size=60)
    assert max(small.size) == 60 and small.getpixel((10, 10)) == (200, 10, 10)

    # The file is gone, but training kept a decoded copy under its content hash.
    gone = ValPrediction("val/cat/missing.png", "cd" * 32, 0, 0, (1.0,))
    assert picture_location({"dataset": str(root)}, gone) is None
    assert prediction_thumbnail({"dataset": str(root)}, gone) is None
    from transfer.core.paths import cache_dir

    cached = cache_dir("decoded") / "64" / "cd" / f"{'cd' * 32}.npy"
    cached.parent.mkdir(parents=True)
    np.save(cached, np.full((64, 80, 3), 7, dtype=np.uint8))
    assert cached_picture("cd" * 32).shape == (64, 80, 3)
    assert prediction_thumbnail({"dataset": str(root)}, gone).getpixel((0, 0)) == (7, 7, 7)
    assert cached_picture("../../etc") is None  # never a path outside the cache
