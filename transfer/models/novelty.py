""""None of these": how unlike the training pictures a picture looks, and when to say so.

A classifier always picks one of its classes, however unrelated the picture. So every run keeps
a *reference*: the L2-normalised backbone features (what the new head receives) of up to
:data:`MAX_REFERENCE` training pictures, chosen class by class so every class is represented.
A picture's ``novelty`` is the cosine distance from its own feature vector to its k-th nearest
reference vector (the deep nearest-neighbour score of Sun et al., 2022): about 0 for a picture
like the training ones, larger the less it resembles any of them.

The run's thresholds come from the training pictures alone: the reference is split into three
parts, each picture is scored against the other two (cross-fitting, see
:func:`held_out_distances`), and the threshold of a strictness is the novelty below which
that share of them falls (:data:`STRICTNESS`: relaxed keeps about 99 %, normal 95 %, strict
90 %). A picture whose novelty is above the chosen threshold is ``unknown``: "None of these".

What a run keeps (see :func:`save_reference`):

``novelty.safetensors``
    ``reference``: float32 ``(n, dim)``, unit-length rows.
``model.json`` ``"novelty"``
    ``{"file", "k", "metric", "reference_pictures", "training_pictures", "dim",
    "thresholds": {"relaxed", "normal", "strict"}, "default": "normal", "calibration"}``.

Scoring is plain numpy here (:meth:`Reference.score`); exports carry the same computation inside
the model graph (:func:`scored_model`: normalise, one matrix product, top-k), so the ONNX file
answers ``novelty`` beside ``probabilities``. Importing this module loads neither torch nor any
model: the web pages read thresholds through it, and other parts of the engine may call
:func:`build_reference` and :meth:`Reference.score` on feature vectors of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer.data.picture import STRICTNESS, unknown_threshold

__all__ = ["MAX_REFERENCE", "NOT_AVAILABLE", "REFERENCE_FILE", "STRICTNESS", "Reference", "build_reference",
           "choose_reference", "describe_answer", "head_input_vectors", "load_reference", "neighbour_count",
           "novelty_info", "save_reference", "scored_model", "unknown_threshold", "validation_novelty"]

REFERENCE_FILE = "novelty.safetensors"
#: At most this many training pictures are kept as the reference: scoring costs one matrix
#: product with it, so prediction time stays flat however large the data set (2048 x 1280
#: float32 is 10 MB on disk and about 0.3 ms per picture on one core).
MAX_REFERENCE = 2048
#: The neighbour whose distance is the score; fewer for tiny data sets (see neighbour_count).
DEFAULT_K = 10
CALIBRATION_FOLDS = 3  # see held_out_distances
METRIC = "cosine distance to the k-th nearest training picture"
#: Said once where a run has no novelty (trained before "None of these" existed).
NOT_AVAILABLE = ("This model was trained before Transfer Studio could say \"None of these\": it always answers "
                 "with one of its classes. Train it again to get unknown-picture detection.")
_CHUNK = 1024  # rows of the similarity matrix computed at a time


# --------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    """A run's reference features, its neighbour count and thresholds."""

    vectors: np.ndarray  # (n, dim) float32, unit rows
    k: int
    thresholds: dict[str, float]
    training_pictures: int = 0
    calibration: str = ""

    def score(self, features) -> np.ndarray:
        """Novelty of each feature vector (rows of ``features``; 4-D feature maps are pooled)."""
        queries = normalise(pool(np.asarray(features, dtype=np.float32)))
        return kth_distance(queries, self.vectors, self.k)

    def threshold(self, setting: str | float | None = "normal") -> float | None:
        """The novelty above which a picture is unknown at ``setting`` (relaxed, normal, strict,
        a number, or off: None). Raises ValueError for anything else."""
        return unknown_threshold(self.info(), setting)

    def info(self) -> dict:
        """What ``model.json`` records under ``"novelty"``."""
        return {"file": REFERENCE_FILE, "k": self.k, "metric": METRIC, "reference_pictures": len(self.vectors),
                "training_pictures": self.training_pictures, "dim": int(self.vectors.shape[1]),
                "thresholds": {name: round(float(value), 6) for name, value in self.thresholds.items()},
                "default": "normal", "calibration": self.calibration}


def pool(features: np.ndarray) -> np.ndarray:
    """Feature maps ``(n, c, h, w)`` (a convolutional head's input) averaged to ``(n, c)``."""
    return features.mean(axis=(2, 3)) if features.ndim == 4 else features.reshape(len(features), -1)


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def kth_distance(queries: np.ndarray, reference: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """``1 - cos`` to the k-th most similar reference row, for unit rows; with ``leave_one_out``
    the queries are the reference itself and each row's own match is left out."""
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        similarity = queries[start:start + _CHUNK] @ reference.T
        if leave_one_out:
            rows = np.arange(len(similarity))
            similarity[rows, start + rows] = -np.inf
        # the k-th largest similarity is the (n-k)-th smallest
        kth = np.partition(similarity, similarity.shape[1] - k, axis=1)[:, similarity.shape[1] - k]
        out[start:start + _CHUNK] = 1.0 - kth
    return out


def held_out_distances(vectors: np.ndarray, targets, k: int, folds: int | None = None) -> np.ndarray:
    """Each row's k-th-neighbour distance to the rows outside its part, the rows split into
    ``folds`` parts class by class (seeded). Scoring a third against the other two thirds,
    rather than each picture against all the others, leaves the same gap between a picture
    and the reference that a new photo has: on real photos the studio never saw (ants/bees
    and demo-photo models, benchmarks/bench_novelty.py), "normal" then called 5.7-5.9 % of
    real class pictures unknown, against 9.2-11.5 % with leave-one-out."""
    folds = folds or CALIBRATION_FOLDS
    targets = np.asarray(targets)
    generator = np.random.default_rng(0)
    part = np.empty(len(vectors), dtype=np.int64)
    for label in np.unique(targets):
        members = generator.permutation(np.flatnonzero(targets == label))
        part[members] = np.arange(len(members)) % folds
    own = np.empty(len(vectors), dtype=np.float32)
    for fold in range(folds):
        held, rest = part == fold, part != fold
        if not held.any():
            continue
        if rest.sum() < 1:  # too few pictures to split: each against all the others instead
            return kth_distance(vectors, vectors, min(k, len(vectors) - 1), leave_one_out=True)
        own[held] = kth_distance(vectors[held], vectors[rest], min(k, int(rest.sum())))
    return own


def choose_reference(targets, cap: int = MAX_REFERENCE, seed: int = 0) -> np.ndarray:
    """Indices of at most ``cap`` training pictures, class by class in turns (a seeded random
    order within each class), so small classes are kept whole and large ones share the rest."""
    targets = np.asarray(targets)
    if len(targets) <= cap:
        return np.arange(len(targets))
    generator = np.random.default_rng(seed)
    queues = [list(generator.permutation(np.flatnonzero(targets == c))) for c in np.unique(targets)]
    chosen: list[int] = []
    while len(chosen) < cap:
        for queue in queues:
            if queue and len(chosen) < cap:
                chosen.append(int(queue.pop()))
    return np.sort(np.asarray(chosen))


def neighbour_count(targets) -> int:
    """k: :data:`DEFAULT_K`, fewer when the smallest class is small (a picture's neighbours
    should mostly be its own class's pictures), and always fewer than the reference."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64)) if len(targets) else np.zeros(1)
    smallest = int(counts[counts > 0].min()) if (counts > 0).any() else 0
    return int(max(1, min(DEFAULT_K, smallest // 4, len(targets) - 1)))


def build_reference(features, targets, *, training_pictures: int | None = None) -> Reference | None:
    """The reference of a training set: ``features`` ``(n, dim)`` (or feature maps) of the
    training pictures, ``targets`` their class indices (``training_pictures``: how many the
    whole set holds, when ``features`` are already a chosen part of it). None with fewer than
    3 pictures."""
    features, targets = np.asarray(features, dtype=np.float32), np.asarray(targets)
    total = training_pictures or len(features)
    if len(features) < 3:
        return None
    chosen = choose_reference(targets)
    vectors = normalise(pool(features[chosen]))
    k = neighbour_count(targets[chosen])
    own = held_out_distances(vectors, targets[chosen], k)
    thresholds = {name: float(np.quantile(own, keep)) for name, keep in STRICTNESS.items()}
    calibration = (f"{CALIBRATION_FOLDS}-fold cross-fitting on {len(vectors)} of the {total} training pictures: "
                   f"each was scored against the other {CALIBRATION_FOLDS - 1} parts, and each threshold is the "
                   "novelty that "
                   + ", ".join(f"{keep:.0%} of them stay under ({name})" for name, keep in STRICTNESS.items()))
    return Reference(vectors, k, thresholds, total, calibration)


# --------------------------------------------------------------------------- on disk


def save_reference(folder: Path | str, reference: Reference) -> dict:
    """Write ``novelty.safetensors`` into ``folder``; returns the ``model.json`` entry (the caller
    records it, after the file is in place, so model.json never names a missing file)."""
    from safetensors.numpy import save

    from transfer.core.files import atomic_write_bytes

    atomic_write_bytes(Path(folder) / REFERENCE_FILE, save({"reference": np.ascontiguousarray(reference.vectors)}))
    return reference.info()


def novelty_info(folder: Path | str) -> dict | None:
    """The ``"novelty"`` entry of a folder's ``model.json``, or None (no model, or trained before)."""
    try:
        info = json.loads((Path(folder) / "model.json").read_text())
    except (OSError, ValueError):
        return None
    entry = info.get("novelty") if isinstance(info, dict) else None
    return entry if isinstance(entry, dict) and entry.get("thresholds") else None


def load_reference(folder: Path | str) -> Reference | None:
    """The reference of a run (or bundle, or demo snapshot); None when it has none."""
    from safetensors.numpy import load_file

    entry = novelty_info(folder)
    if entry is None:
        return None
    try:
        vectors = load_file(str(Path(folder) / entry.get("file", REFERENCE_FILE)))["reference"]
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # a reference that cannot be read means no novelty, never a broken model
    return Reference(vectors.astype(np.float32), int(entry["k"]), {k: float(v) for k, v in entry["thresholds"].items()},
                     int(entry.get("training_pictures", 0)), str(entry.get("calibration", "")))


def validation_novelty(run_dir: Path | str) -> list[float] | None:
    """Novelty of each validation picture, as the trainer recorded it, or None."""
    try:
        predictions = json.loads((Path(run_dir) / "val_predictions.json").read_text()).get("predictions") or []
    except (OSError, ValueError, AttributeError):
        return None
    values = [p.get("novelty") for p in predictions if isinstance(p, dict)]
    return [float(v) for v in values] if values and all(isinstance(v, (int, float)) for v in values) else None


# --------------------------------------------------------------------------- words


def describe_answer(prediction: dict) -> str:
    """The answer in words: the class, or "None of these" with the closest class second."""
    if prediction.get("unknown"):
        return (f"None of these: looks unlike every class; closest: {prediction['label']} "
                f"{prediction['probability']:.0%}")
    return f"{prediction['label']} ({prediction['probability']:.1%})"


# --------------------------------------------------------------------------- inside a model (torch)


def head_input_vectors(model, x):
    """``(logits, features)`` of a batch: the features are what the model's new head receives
    (pooled when they are feature maps), caught by a pre-hook for this one call."""
    import torch

    from transfer.models.heads import head_module

    caught = []
    hook = head_module(model).register_forward_pre_hook(lambda module, inputs: caught.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    features = caught[-1]
    return logits, (features.mean(dim=(2, 3)) if features.dim() == 4 else features.flatten(1)).to(torch.float32)


def scored_model(model, reference: Reference):
    """``model`` answering ``(probabilities, novelty)``: the softmax of its logits and the
    novelty of its head's input against ``reference``, all inside one graph (what the ONNX
    and TorchScript exports contain). Not for concurrent calls: the hook's catch is shared."""
    import torch

    class ScoredModel(torch.nn.Module):
        def __init__(self, inner, vectors: np.ndarray, k: int):
            super().__init__()
            self.model = inner
            # stored transposed, (dim, n): the graph multiplies by a constant, with no transpose per call
            self.register_buffer("reference_t", torch.from_numpy(np.ascontiguousarray(vectors.T)).float())
            self.k = k

        def forward(self, x):
            logits, features = head_input_vectors(self.model, x)
            unit = torch.nn.functional.normalize(features, dim=1, eps=1e-12)
            nearest = torch.topk(unit @ self.reference_t, self.k, dim=1).values[:, self.k - 1]
            return torch.softmax(logits, dim=1), 1.0 - nearest

    return ScoredModel(model, reference.vectors, reference.k).eval()
