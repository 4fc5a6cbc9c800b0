"""Where a finished run is wrong: confusion matrix, precision, recall and F1 per class, top losses.

Everything here is computed from the run's ``val_predictions.json`` (written by the trainer for
its best epoch, see :mod:`transfer.training.run`): the true class, the predicted class and the
probabilities of every validation picture. No model is loaded, so evaluating a run costs
milliseconds, and the numbers are exactly those of the weights the run keeps.

Conventions, the same as most ML tools: rows of the confusion matrix are the true classes,
columns the predicted ones; a class that was never predicted has no precision and a class
without validation pictures has no recall (``None``, shown as a dash, never a made-up 0).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.core.errors import TransferError

PREDICTIONS_FILE = "val_predictions.json"
# The smallest probability a loss is computed from: a confident mistake (p = 0 after rounding
# to six digits in the file) gets a large, finite loss instead of infinity.
_MIN_PROBABILITY = 1e-7


class EvaluationNotReady(TransferError):
    """The run has no validation predictions to evaluate (yet)."""


# --------------------------------------------------------------------------- one picture


@dataclass(frozen=True)
class ValPrediction:
    """One validation picture: where it is, its true class and what the model said."""

    path: str
    sha256: str
    true_index: int
    predicted_index: int
    probabilities: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.true_index == self.predicted_index

    @property
    def true_probability(self) -> float:
        return self.probabilities[self.true_index]

    @property
    def predicted_probability(self) -> float:
        return self.probabilities[self.predicted_index]

    @property
    def loss(self) -> float:
        """Cross-entropy of this picture: how surprised the model is by the true class."""
        return -math.log(max(self.true_probability, _MIN_PROBABILITY))


# --------------------------------------------------------------------------- pure metrics


def confusion_matrix(true_indices, predicted_indices, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_indices, dtype=np.int64), np.asarray(predicted_indices, dtype=np.int64)), 1)
    return matrix


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of a true class predicted as each class);
    a row without pictures stays all zeros."""
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class; ``support`` is its number of validation pictures."""

    name: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int
    predicted: int  # how many pictures the model assigned to this class

    def to_dict(self) -> dict:
        return {"class": self.name, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support, "predicted": self.predicted}


def per_class_metrics(matrix: np.ndarray, classes: list[str]) -> list[ClassMetrics]:
    """Precision (of the pictures called X, the share that are X), recall (of the pictures that
    are X, the share called X) and their harmonic mean F1, for each class in order."""
    metrics = []
    for index, name in enumerate(classes):
        hits = int(matrix[index, index])
        support, predicted = int(matrix[index].sum()), int(matrix[:, index].sum())
        precision = hits / predicted if predicted else None
        recall = hits / support if support else None
        # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and stays defined
        # (as 0) when the class was never predicted or has no pictures but was predicted.
        f1 = 2 * hits / (support + predicted) if support + predicted else None
        metrics.append(ClassMetrics(name, precision, recall, f1, support, predicted))
    return metrics


def macro_average(metrics: list[ClassMetrics], field: str) -> float | None:
    """The unweighted mean of ``field`` over the classes where it is defined."""
    values = [getattr(m, field) for m in metrics if getattr(m, field) is not None]
    return sum(values) / len(values) if values else None


def top_losses(predictions: list[ValPrediction], count: int = 12, *,
               mistakes_only: bool = False) -> list[ValPrediction]:
    """The ``count`` pictures the model was most wrong about: highest loss first (the lowest
    probability for the true class). Ties keep the file order, so the gallery is stable."""
    candidates = [p for p in predictions if not p.correct] if mistakes_only else list(predictions)
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].loss, i))
    return [candidates[i] for i in order[:max(0, count)]]


# --------------------------------------------------------------------------- a run's evaluation


@dataclass
class Evaluation:
    """The validation predictions of a run's best epoch, and everything derived from them."""

    classes: list[str]
    predictions: list[ValPrediction]
    epoch: int | None = None

    @property
    def count(self) -> int:
        return len(self.predictions)

    @property
    def accuracy(self) -> float | None:
        if not self.predictions:
            return None
        return sum(p.correct for p in self.predictions) / len(self.predictions)

    def confusion(self, normalised: bool = False) -> np.ndarray:
        matrix = confusion_matrix([p.true_index for p in self.predictions],
                                  [p.predicted_index for p in self.predictions], len(self.classes))
        return normalise_rows(matrix) if normalised else matrix

    def per_class(self) -> list[ClassMetrics]:
        return per_class_metrics(self.confusion(), self.classes)

    def macro_f1(self) -> float | None:
        return macro_average(self.per_class(), "f1")

    def top_losses(self, count: int = 12, *, mistakes_only: bool = False) -> list[ValPrediction]:
        return top_losses(self.predictions, count, mistakes_only=mistakes_only)

    def label(self, index: int) -> str:
        return self.classes[index]

    @classmethod
    def from_dict(cls, data: dict) -> "Evaluation":
        """From the trainer's ``val_predictions.json`` layout (see :mod:`transfer.training.run`)."""
        classes = [str(name) for name in data["classes"]]
        index = {name: i for i, name in enumerate(classes)}
        predictions = []
        for item in data["predictions"]:
            probabilities = tuple(float(p) for p in item["probabilities"])
            if len(probabilities) != len(classes) or item["label"] not in index:
                raise ValueError(f"prediction for {item.get('path')!r} does not match the classes {classes}")
            predicted = item.get("predicted")
            predicted_index = index[predicted] if predicted in index else int(np.argmax(probabilities))
            predictions.append(ValPrediction(str(item.get("path", "")), str(item.get("sha256", "")),
                                             index[item["label"]], predicted_index, probabilities))
        epoch = data.get("epoch")
        return cls(classes, predictions, epoch if isinstance(epoch, int) else None)


def load_evaluation(run_dir: Path | str) -> Evaluation:
    """The evaluation of the run in ``run_dir``; :class:`EvaluationNotReady` with a sentence when
    the run has not written its validation predictions (still training, failed, or too old)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvaluationNotReady(
            "This run has no validation predictions yet: they are written when training finishes. "
            "Wait for it to finish, or train it again if it stopped early."
        ) from None
    except (OSError, json.JSONDecodeError):
        raise EvaluationNotReady(f"{path.name} of this run is damaged; train the run again to evaluate it.") from None
    try:
        evaluation = Evaluation.from_dict(data)
    except (KeyError, TypeError, ValueError):
        raise EvaluationNotReady(
            f"{path.name} of this run is not in the expected format; train the run again.") from None
    if not evaluation.predictions:
        raise EvaluationNotReady("This run had no validation pictures, so there is nothing to evaluate; "
                                 "give the data set a val/ folder or a validation share above zero.")
    return evaluation


# --------------------------------------------------------------------------- the pictures themselves


def picture_location(run_config: dict, prediction: ValPrediction) -> Path | None:
    """The file of a validation picture, if it is still where the run found it.

    The trainer stores paths relative to the data set's root; the root is in the run's config
    when the data set was given as a checked data set (the web app does this) or as a folder.
    """
    path = Path(prediction.path)
    if path.is_absolute():
        return path if path.is_file() else None
    dataset = run_config.get("dataset")
    roots = []
    if isinstance(dataset, dict) and dataset.get("root"):
        roots.append(Path(dataset["root"]))
    elif isinstance(dataset, str):
        roots.append(Path(dataset).expanduser())
    for root in roots:
        candidate = root / path
        if candidate.is_file():
            return candidate
    return None


def cached_picture(sha256: str) -> np.ndarray | None:
    """The decoded copy training kept of a picture (by content hash), when the file itself is
    gone or was inside a zip: any size the decode cache holds, smallest first."""
    from transfer.core.paths import cache_dir

    if not sha256 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    root = cache_dir("decoded")
    sizes = sorted((p for p in root.iterdir() if p.name.split("-")[0].isdigit()),
                   key=lambda p: (int(p.name.split("-")[0]), p.name)) if root.is_dir() else []
    for size_dir in sizes:
        try:
            array = np.load(size_dir / sha256[:2] / f"{sha256}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            continue
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
            return array
    return None


def prediction_thumbnail(run_config: dict, prediction: ValPrediction, size: int = 160):
    """A small RGB picture (PIL) of a validation picture for a gallery, or None when neither the
    file nor a decoded copy can be found."""
    from PIL import Image

    from transfer.data.images import ImageError, thumbnail

    location = picture_location(run_config, prediction)
    if location is not None:
        try:
            return thumbnail(location, size)
        except ImageError:
            pass
    array = cached_picture(prediction.sha256)
    if array is None:
        return None
    image = Image.fromarray(array)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image
