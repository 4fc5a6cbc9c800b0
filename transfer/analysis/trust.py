"""How much an accuracy can be trusted: counts, intervals, changes between runs, unsure answers.

An accuracy measured on 10 validation pictures moves 10 points with one picture, so the studio
never shows it alone: every accuracy carries its count ("8 of 10"), and a small validation set
adds the range the true accuracy likely lies in (Wilson's 95 % interval, which stays inside 0-100 %
and behaves with few pictures, unlike the normal approximation). Below ``TOO_FEW_TO_TELL``
pictures the page says so instead of showing a range that spans nearly everything.

Changes between two runs are in points. Whether a change is more than chance alone would give:

* measured on the same validation pictures (a retrain, see :mod:`transfer.analysis.compare`),
  only the pictures whose answer changed carry information. Under "no real difference" each of
  them is as likely to go wrong -> right as right -> wrong, so the exact two-sided sign test
  (McNemar's exact test) on those pictures gives the chance of a split at least as uneven; at
  5 % or more the change is within chance. 2 better and 3 worse, for instance, is a coin's work.
* measured on different pictures, the two Wilson intervals are compared: a change whose
  intervals overlap is called within chance (a cautious rule: it calls a few real changes
  chance, never chance a real change).

Unsure answers: when the two likeliest classes are close, an answer is a coin flip and is shown
as "not sure: <a> or <b>". How close is measured on the run's validation pictures (see
:func:`measured_unsure_margin`).

Everything here is torch-free: the web server's pages call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from transfer.core.files import read_json

Z_95 = 1.959964  # the normal quantile of a 95 % two-sided interval
TOO_FEW_TO_TELL = 5  # fewer validation pictures than this: no range is worth showing
SMALL_VALIDATION = 200  # below this many validation pictures, the range is shown next to the count
CHANCE_LEVEL = 0.05  # a change at least this likely under "no real difference" is within chance


def percent(share: float, total: int) -> str:
    """A share as per cent with no more digits than the count can carry (one picture of 10 is 10 points)."""
    return f"{share * 100:.0f} %" if total < 1000 else f"{share * 100:.1f} %"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 picture``, ``300 pictures``: a count with the word in the right number."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``correct / total`` (``(0, 1)`` when total is 0)."""
    if total <= 0:
        return 0.0, 1.0
    share = correct / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- one accuracy


@dataclass(frozen=True)
class Accuracy:
    """An accuracy as counts: ``correct`` of ``total`` validation pictures, and, when the run used
    it, the cross-validated figure over all labelled pictures."""

    correct: int
    total: int
    cv_correct: int | None = None
    cv_total: int | None = None
    cv_folds: int | None = None

    @property
    def share(self) -> float | None:
        return self.correct / self.total if self.total else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    @property
    def cross_validated(self) -> bool:
        return bool(self.cv_total)

    def headline(self) -> str:
        """The figure a metric tile shows: ``8 of 10``."""
        return f"{self.correct:,} of {self.total:,}" if self.total else "–"

    def short(self) -> str:
        """For a table cell: ``8 of 10 (80 %)``."""
        return f"{self.headline()} ({percent(self.share, self.total)})" if self.total else "–"

    def describe(self) -> str:
        """``8 of 10 (80 %, likely between 49 % and 94 %)``, or the sentence saying it cannot tell."""
        return describe_counts(self.correct, self.total)

    def describe_cross_validation(self) -> str:
        """The cross-validated figure and how it was made; empty when cross-validation was not used."""
        if not self.cross_validated:
            return ""
        folds = f" in {self.cv_folds} folds" if self.cv_folds else ""
        return (f"Cross-validated over all {plural(self.cv_total, 'labelled picture')}{folds}: "
                f"{describe_counts(self.cv_correct or 0, self.cv_total)}. With few pictures this is the steadier "
                "figure: every labelled picture is validated once, by a head that did not train on it.")


def describe_counts(correct: int, total: int) -> str:
    if total <= 0:
        return "no validation pictures, so no accuracy"
    text = f"{correct:,} of {total:,} ({percent(correct / total, total)}"
    if total < TOO_FEW_TO_TELL:
        return text + "): too few validation pictures to tell"
    if total < SMALL_VALIDATION:
        low, high = wilson_interval(correct, total)
        return text + f", likely between {percent(low, total)} and {percent(high, total)})"
    return text + ")"


def run_accuracy(run_dir: Path | str, status: dict | None = None) -> Accuracy | None:
    """A run's validation accuracy as counts.

    From ``status.json`` (``val_correct``, ``val_total`` and the ``cv_`` figures) when the run
    wrote them; for an older run, counted from its validation answers (``val_predictions.json``),
    else its ``val_accuracy`` times its number of validation pictures. None when nothing tells.
    """
    run_dir = Path(run_dir)
    status = status if status is not None else (read_json(run_dir / "status.json", {}) or {})
    cv = {key: _whole(status.get(f"cv_{key}")) for key in ("correct", "total", "folds")}
    cv_figures = dict(cv_correct=cv["correct"], cv_total=cv["total"], cv_folds=cv["folds"]) if cv["total"] else {}
    correct, total = _whole(status.get("val_correct")), _whole(status.get("val_total"))
    if correct is not None and total is not None:
        return Accuracy(correct, total, **cv_figures)
    counted = _counted_from_answers(run_dir)
    if counted is not None:
        return Accuracy(*counted, **cv_figures)
    share, total = status.get("val_accuracy"), _validation_pictures(run_dir)
    if isinstance(share, (int, float)) and total:
        return Accuracy(round(share * total), total, **cv_figures)
    return None


def _whole(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _counted_from_answers(run_dir: Path) -> tuple[int, int] | None:
    answers = read_json(run_dir / "val_predictions.json", None)
    rows = answers.get("predictions") if isinstance(answers, dict) else None
    if not isinstance(rows, list) or not rows:
        return None
    classes = answers.get("classes") or []
    return sum(1 for row in rows if _answer_right(row, classes)), len(rows)


def _answer_right(row, classes: list) -> bool:
    """Whether one row of ``val_predictions.json`` (``label``, ``predicted``, ``probabilities``) was right."""
    if not isinstance(row, dict):
        return False
    predicted = row.get("predicted")
    probabilities = row.get("probabilities")
    if predicted is None and isinstance(probabilities, list) and len(probabilities) == len(classes) and classes:
        predicted = classes[max(range(len(probabilities)), key=lambda i: probabilities[i])]
    return predicted is not None and predicted == row.get("label")


def _validation_pictures(run_dir: Path) -> int | None:
    config = read_json(run_dir / "config.json", {}) or {}
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("samples"), list):
        return sum(1 for sample in dataset["samples"] if isinstance(sample, dict) and sample.get("split") == "val")
    return None


# --------------------------------------------------------------------------- a change between runs


@dataclass(frozen=True)
class Change:
    """The change from one accuracy to another, in points, and whether chance alone could give it."""

    points: float  # after - before, in percentage points
    within_chance: bool
    rule: str  # how "within chance" was decided, in a few words

    def describe(self) -> str:
        sign = "+" if self.points > 0 else "−" if self.points < 0 else "±"
        text = f"{sign}{abs(self.points):.0f} points" if abs(self.points) >= 1 or self.points == 0 \
            else f"{sign}{abs(self.points):.1f} points"
        if self.within_chance:
            return f"{text}: within what chance alone would give ({self.rule})"
        return f"{text}: more than chance alone would give ({self.rule})"


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test: the chance, if better and worse were equally likely, of a split of
    ``better + worse`` changed pictures at least as uneven as this one."""
    changed = better + worse
    if changed == 0:
        return 1.0
    tail = sum(math.comb(changed, k) for k in range(min(better, worse) + 1)) / 2 ** changed
    return min(1.0, 2 * tail)


def paired_change(before_correct: int, after_correct: int, total: int, better: int, worse: int) -> Change:
    """Two runs on the same ``total`` validation pictures; ``better`` went wrong -> right, ``worse`` right -> wrong."""
    points = 100.0 * (after_correct - before_correct) / total if total else 0.0
    chance = sign_test(better, worse)
    rule = (f"{plural(better, 'picture')} better, {worse:,} worse; a split at least this uneven "
            f"comes by chance {chance:.0%} of the time")
    return Change(points, chance >= CHANCE_LEVEL, rule)


def unpaired_change(before: Accuracy, after: Accuracy) -> Change:
    """Two accuracies on different pictures: within chance when their likely ranges overlap."""
    if not before.total or not after.total:
        return Change(0.0, True, "one run has no validation pictures")
    points = 100.0 * ((after.share or 0.0) - (before.share or 0.0))
    (low_a, high_a), (low_b, high_b) = before.interval, after.interval
    overlap = low_a <= high_b and low_b <= high_a
    return Change(points, overlap, "their likely ranges overlap" if overlap else "their likely ranges do not overlap")


# --------------------------------------------------------------------------- unsure answers


DEFAULT_UNSURE_MARGIN = 0.10  # 10 points: where the validation pictures are too few to measure
UNSURE_GRID = tuple(round(0.02 * step, 2) for step in range(1, 16))  # 2 to 30 points
MIN_CLOSE_ANSWERS = 5  # a margin is measured only from at least this many validation answers below it
COIN_FLIP_ACCURACY = 0.6  # answers right no more often than this are not worth stating as one class


@dataclass(frozen=True)
class UnsureMargin:
    margin: float  # the top class must lead the second by at least this to be stated alone
    how: str


def measured_unsure_margin(answers: list[tuple[list[float], bool]]) -> UnsureMargin:
    """The margin between the two likeliest classes below which an answer is "not sure".

    ``answers`` are the run's validation pictures: each one's class probabilities and whether
    its answer was right. The margin is the widest of 2, 4, ... 30 points (the narrowest of those
    that take in the same answers) below which at least
    ``MIN_CLOSE_ANSWERS`` validation answers lie and at most ``COIN_FLIP_ACCURACY`` of them were
    right (no better than a guess between two classes); with too few close answers to measure,
    ``DEFAULT_UNSURE_MARGIN``.
    """
    margins = []
    for probabilities, right in answers:
        ranked = sorted((float(p) for p in probabilities), reverse=True)
        margins.append((round(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0), 6), bool(right)))
    chosen = None
    for candidate in UNSURE_GRID:
        close = [right for margin, right in margins if margin < candidate]
        # Among margins that take in the same answers, the narrowest: nothing beyond them was measured.
        if len(close) >= MIN_CLOSE_ANSWERS and sum(close) / len(close) <= COIN_FLIP_ACCURACY \
                and (chosen is None or len(close) > chosen[1]):
            chosen = (candidate, len(close), sum(close))
    if chosen is None:
        return UnsureMargin(DEFAULT_UNSURE_MARGIN, f"{DEFAULT_UNSURE_MARGIN * 100:.0f} points: too few close "
                                                   "answers among the validation pictures to measure")
    margin, close, right = chosen
    return UnsureMargin(margin, f"{margin * 100:.0f} points: below it, {right} of {close} validation answers "
                                "were right, no better than a guess between two classes")


def run_unsure_margin(run_dir: Path | str) -> UnsureMargin:
    """:func:`measured_unsure_margin` on a run's validation answers (``val_predictions.json``)."""
    answers = read_json(Path(run_dir) / "val_predictions.json", None)
    rows = answers.get("predictions") if isinstance(answers, dict) else None
    classes = answers.get("classes") or [] if isinstance(answers, dict) else []
    measured = [(row["probabilities"], _answer_right(row, classes)) for row in rows or []
                if isinstance(row, dict) and isinstance(row.get("probabilities"), list) and row["probabilities"]]
    return measured_unsure_margin(measured)


def unsure_pair(top_k: list[dict], margin: float) -> tuple[str, str] | None:
    """The two classes an answer hesitates between, or None when the first leads by ``margin`` or more."""
    ranked = sorted(top_k, key=lambda item: -float(item["probability"]))
    if len(ranked) < 2 or float(ranked[0]["probability"]) - float(ranked[1]["probability"]) >= margin:
        return None
    return str(ranked[0]["label"]), str(ranked[1]["label"])


def describe_unsure(pair: tuple[str, str]) -> str:
    return f"not sure: {pair[0]} or {pair[1]}"
