"""How much an accuracy can be trusted: counts, intervals, changes, unsure answers (transfer.analysis.trust)."""

from __future__ import annotations

import json

import pytest

from transfer.analysis.trust import (
    DEFAULT_UNSURE_MARGIN,
    Accuracy,
    describe_counts,
    measured_unsure_margin,
    paired_change,
    plural,
    run_accuracy,
    run_unsure_margin,
    sign_test,
    unpaired_change,
    unsure_pair,
    wilson_interval,
)


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490, abs=0.001) and high == pytest.approx(0.943, abs=0.001)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_a_small_validation_set_shows_its_count_and_its_range_and_a_tiny_one_says_it_cannot_tell():
    assert describe_counts(8, 10) == "8 of 10 (80 %, likely between 49 % and 94 %)"
    assert describe_counts(3, 4) == "3 of 4 (75 %): too few validation pictures to tell"
    assert describe_counts(900, 1000) == "900 of 1,000 (90.0 %)"
    assert Accuracy(8, 10).headline() == "8 of 10"


def write_run(folder, status: dict, predictions: list | None = None, samples: list | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps(status))
    if predictions is not None:
        (folder / "val_predictions.json").write_text(json.dumps({"classes": ["a", "b"], "predictions": predictions}))
    if samples is not None:
        (folder / "config.json").write_text(json.dumps({"dataset": {"root": "/x", "classes": ["a", "b"],
                                                                    "samples": samples}}))
    return folder


def test_the_run_accuracy_comes_from_status_then_answers_then_the_share(tmp_path):
    counted = write_run(tmp_path / "new", {"val_accuracy": 0.8, "val_correct": 8, "val_total": 10,
                                           "cv_accuracy": 0.75, "cv_correct": 15, "cv_total": 20, "cv_folds": 5})
    figure = run_accuracy(counted)
    assert (figure.correct, figure.total, figure.cv_total, figure.cv_folds) == (8, 10, 20, 5)
    assert "Cross-validated over all 20 labelled pictures in 5 folds: 15 of 20 (75 %" in figure.describe_cross_validation()
    answers = [{"label": "a", "predicted": "a", "probabilities": [0.9, 0.1]},
               {"label": "b", "probabilities": [0.7, 0.3]},  # no "predicted": the argmax (a) is wrong
               {"label": "b", "predicted": "b", "probabilities": [0.2, 0.8]}]
    older = run_accuracy(write_run(tmp_path / "old", {"val_accuracy": 0.66}, predictions=answers))
    assert (older.correct, older.total, older.cross_validated) == (2, 3, False)
    samples = [{"path": f"{i}.png", "label": "a", "split": "val" if i < 4 else "train", "sha256": str(i)}
               for i in range(10)]
    oldest = run_accuracy(write_run(tmp_path / "oldest", {"val_accuracy": 0.75}, samples=samples))
    assert (oldest.correct, oldest.total) == (3, 4)
    assert run_accuracy(write_run(tmp_path / "none", {"state": "queued"})) is None


def test_two_better_and_three_worse_on_ten_pictures_is_within_chance():
    change = paired_change(8, 7, 10, better=2, worse=3)
    assert change.points == pytest.approx(-10.0) and change.within_chance
    assert change.describe().startswith("−10 points: within what chance alone would give")
    assert sign_test(2, 3) == pytest.approx(1.0)
    clear = paired_change(40, 60, 100, better=22, worse=2)
    assert not clear.within_chance and clear.describe().startswith("+20 points: more than chance")


def test_changes_on_different_pictures_compare_their_ranges():
    assert unpaired_change(Accuracy(8, 10), Accuracy(7, 10)).within_chance
    assert not unpaired_change(Accuracy(50, 200), Accuracy(180, 200)).within_chance


def test_close_answers_are_not_sure_and_the_margin_is_measured_on_validation_answers(tmp_path):
    assert unsure_pair([{"label": "x", "probability": 0.206}, {"label": "y", "probability": 0.205}], 0.1) == ("x", "y")
    assert unsure_pair([{"label": "x", "probability": 0.9}, {"label": "y", "probability": 0.1}], 0.1) is None
    # Answers with margins under 20 points were right half of the time, the others always.
    answers = [([0.55, 0.45], i % 2 == 0) for i in range(10)] + [([0.57, 0.43], i % 2 == 0) for i in range(4)] \
        + [([0.95, 0.05], True)] * 30
    measured = measured_unsure_margin(answers)
    assert measured.margin == pytest.approx(0.16) and "validation answers were right" in measured.how
    assert measured_unsure_margin([([0.9, 0.1], True)] * 3).margin == DEFAULT_UNSURE_MARGIN
    run = write_run(tmp_path / "run", {}, predictions=[{"label": "a", "predicted": "b", "probabilities": [0.49, 0.51]}] * 6)
    assert run_unsure_margin(run).margin == pytest.approx(0.04)


def test_plural_forms_are_real_words():
    assert plural(1, "picture") == "1 picture" and plural(300, "picture") == "300 pictures"
    assert plural(2, "class", "classes") == "2 classes"
