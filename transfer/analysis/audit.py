"""The data audit: likely label mistakes, near-duplicates and outliers, found from backbone features.

Every picture (training and validation alike) gets an *out-of-fold* prediction: the pictures
are cut into k folds per class, and a linear head trained on the other folds' cached features
judges each fold, so no picture is judged by a head that saw its label. Then

``suspects``
    pictures whose given label the heads find unlikely while another class is likely, as
    cleanlab's confident learning (``cleanlab.filter.find_label_issues``) judges them from the
    out-of-fold probabilities; ``score`` is p(suggested) - p(given), so the clearest cases
    come first.
``near_duplicates``
    pairs whose centred features point the same way (cosine similarity), so re-encoded,
    resized or lightly cropped copies are found, not only identical files; a pair split
    between training and validation is *leakage*, a pair under two classes a *label conflict*.
``outliers``
    pictures far from every class: even their nearest neighbours in the closest class are
    unusually unlike them (blank, wrong content, broken-looking pictures).

:func:`feature_map` lays the features out in two dimensions (scikit-learn's t-SNE after PCA)
for the Data and Evaluate pages. ``python -m transfer.analysis.audit`` runs an audit or a run's map as a
job that writes ``progress.json`` and ``result.json`` into a folder, so the web server only
reads files. torch and cleanlab are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_json, read_json
from transfer.data.samples import relative_name

MAX_FOLDS = 5
CANDIDATE_SIMILARITY = 0.6  # cosine of centred features worth a look at the pixels
NEAR_DUPLICATE_SIMILARITY = 0.97  # features this alike need no pixel check
PIXEL_SIMILARITY = 0.9  # cosine of the centred colour fingerprints of a near-duplicate pair
FINGERPRINT_SIDE = 12
MAX_NEAR_DUPLICATES = 200
OUTLIER_Z = 2.0  # robust z-score of "unlike its nearest neighbours": the unusual few, for a look
MAX_OUTLIER_SHARE = 0.02
NEIGHBOURS = 5
SUSPECT_FILTER = "prune_by_class"  # cleanlab's filter, chosen by measurement (see find_suspects)
SUSPECT_RANKING = "normalized_margin"
MAX_MAP_POINTS = 5000
MAX_AUDIT_PICTURES = 20_000
PROGRESS_FILE = "progress.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
JOB_LOCK = "job.lock"  # held by the job's process while it works
RUN_MAP_FOLDER = "feature_map"

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class AuditError(TransferError):
    """The audit cannot run on this data; the message says what to change."""


@dataclass
class Suspect:
    path: str
    given: str
    suggested: str
    score: float
    p_given: float
    p_suggested: float
    split: str
    sha256: str


@dataclass
class NearDuplicate:
    a: str
    b: str
    similarity: float
    classes: list[str]
    splits: list[str]
    kind: str  # "leakage" | "label_conflict" | "within_class"
    identical: bool


@dataclass
class Outlier:
    path: str
    given: str
    split: str
    score: float  # robust z-score: how much further from its neighbours than is usual here
    sha256: str


@dataclass
class AuditResult:
    root: str
    backbone: str
    classes: list[str]
    pictures: int
    folds: int
    seconds: float
    feature_seconds: float
    features_cached: int
    features_computed: int
    suspects: list[Suspect] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    outliers: list[Outlier] = field(default_factory=list)
    map: list[dict] = field(default_factory=list)  # {"path", "label", "split", "x", "y", "suspect"}

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- features


@dataclass
class PictureFeatures:
    features: np.ndarray  # (n, dim) float32
    seconds: float
    cached: int
    computed: int


def free_cores() -> int:
    """Threads for the audit's work: the cores nobody else is using, at least one.

    Threads that wait for each other (t-SNE at every one of its thousand steps, the backbone at
    every layer) lose a time slice at each wait when other processes hold the cores (a training
    run, another session's audit). On two busy cores (load average 10-19) the map of 398
    pictures took 86 s with two threads and 14-22 s with one; the features of 120 pictures
    27-36 s with two and 15-16 s with one. An idle machine keeps every core.
    """
    from transfer.core.machine import cpu_cores

    cores = cpu_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this system
        busy = 0.0
    return max(1, min(cores, cores - int(busy)))


def picture_features(samples: list, backbone: str, image_size: int | None = None, *,
                     progress: Progress | None = None, phase: str = "features") -> PictureFeatures:
    """Centre-crop backbone features of ``samples``, read from (and added to) the training runs' cache."""
    import torch

    from transfer.data.augment import preprocessing_for
    from transfer.models.backbones import get_backbone
    from transfer.core.devices import resolve_device
    from transfer.models.features import CENTRE_VIEW, FeatureCache, extract_features
    from transfer.models.methods import create_model

    prep = preprocessing_for(get_backbone(backbone).preprocessing, image_size)
    setup = resolve_device("auto", "auto")

    def load_model():
        model = create_model(backbone, 2, "features")
        if model.transfer_head.convolutional:
            raise AuditError(f"{backbone}'s head works on feature maps, not feature vectors; "
                             "check the labels with another backbone (efficientnet_lite0 is the default).")
        return model

    report = (lambda done, total, _seconds: progress(phase, done, total)) if progress else None
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, free_cores()))
    try:
        with torch.inference_mode():
            features, stats = extract_features(samples, [CENTRE_VIEW], backbone=backbone, prep=prep,
                                               augmentation="none", spec=None, setup=setup, load_model=load_model,
                                               batch_size=32, cache=FeatureCache(), progress=report)
    finally:
        torch.set_num_threads(threads)
    return PictureFeatures(features[:, 0].numpy(), stats.seconds, stats.cached, stats.computed)


# --------------------------------------------------------------------------- out-of-fold predictions


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per picture, each class spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        # Continue the rotation from the previous class, so small classes do not all start in fold 0.
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return assignment


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int,
                              seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """``(n, num_classes)`` probabilities, each row from a linear head that never saw that picture."""
    import torch

    from transfer.models.heads import make_head
    from transfer.training.run import fit_head_on_features

    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    targets = torch.from_numpy(labels.astype(np.int64))
    fold_of = stratified_folds(labels, folds, seed)
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float32)
    for fold in range(folds):
        held_out = torch.from_numpy(np.flatnonzero(fold_of == fold))
        trained_on = torch.from_numpy(np.flatnonzero(fold_of != fold))
        if len(held_out) == 0 or len(trained_on) == 0:
            continue
        torch.manual_seed(seed + fold)
        head = make_head(inputs.shape[1], num_classes)
        fit_head_on_features(head, inputs[trained_on], targets[trained_on], seed=seed + fold)
        with torch.no_grad():
            probabilities[held_out.numpy()] = torch.softmax(head(inputs[held_out]), dim=1).numpy()
        if progress:
            progress("heads", fold + 1, folds)
    return probabilities


def fold_count(labels: np.ndarray) -> int:
    """As many folds as the smallest class allows (2 to 5): each class is then in every fold."""
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    return max(2, min(MAX_FOLDS, smallest))


# --------------------------------------------------------------------------- the three lists


def find_suspects(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float]]:
    """``(picture, suggested class, score)`` for likely label mistakes, clearest first.

    cleanlab's confident learning decides which pictures are suspect: from the out-of-fold
    probabilities it estimates how many of each class's pictures carry a wrong label, then
    lists that many of the class's pictures, those the heads find least likely to be of their
    given class (``prune_by_class``), leaving out any the heads still give their own label.
    Measured with 10 % of labels flipped (``benchmarks/bench_audit.py --all-filters``), this
    finds the most flips of the filters that do not bury them in false alarms.
    The suggestion is the class the heads find most likely; ``score`` is p(suggested) - p(given)
    (cleanlab's normalized margin, the ranking used), so the clearest cases come first.
    """
    from cleanlab.filter import find_label_issues

    n = len(labels)
    if n == 0:
        return []
    with warnings.catch_warnings():
        # A class of one or two pictures cannot lose any: saying so on every audit helps nobody.
        warnings.filterwarnings("ignore", message="May not flag all label issues")
        # n_jobs=1: the probabilities are small, and forking a process that holds torch is slow.
        ranked = find_label_issues(labels, probabilities, filter_by=SUSPECT_FILTER,
                                   return_indices_ranked_by=SUSPECT_RANKING, n_jobs=1)
    others = probabilities.copy()
    others[np.arange(n), labels] = -1.0
    suggested = others.argmax(axis=1)
    margin = others[np.arange(n), suggested] - probabilities[np.arange(n), labels]
    suspects = [(int(i), int(suggested[i]), float(margin[i])) for i in ranked if margin[i] > 0]
    return sorted(suspects, key=lambda suspect: -suspect[2])


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Centred, length-one feature vectors: cosine similarity becomes a dot product.

    Centring matters: pooled activations after ReLU are all positive, so raw vectors of
    unrelated pictures already have a high cosine similarity.
    """
    centred = features - features.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def find_near_duplicates(unit: np.ndarray, paths: list[Path], hashes: list[str],
                         limit: int = MAX_NEAR_DUPLICATES) -> list[tuple[int, int, float]]:
    """``(i, j, similarity)`` for pictures of the same scene, most alike first.

    The network's features say *what* a picture shows, so two different ants on the ground can
    be as alike as a photo and its resized copy. Pairs whose features are alike are therefore
    confirmed on the pixels too (a tiny colour fingerprint), unless the features alone are
    all but equal; identical files always count.
    """
    candidates = similar_pairs(unit, CANDIDATE_SIMILARITY)
    fingerprints: dict[int, np.ndarray | None] = {}

    def fingerprint(index: int) -> np.ndarray | None:
        if index not in fingerprints:
            fingerprints[index] = pixel_fingerprint(paths[index])
        return fingerprints[index]

    pairs = []
    for i, j, similarity in candidates:
        if hashes[i] == hashes[j] or similarity >= NEAR_DUPLICATE_SIMILARITY:
            pairs.append((i, j, similarity))
            continue
        a, b = fingerprint(i), fingerprint(j)
        if a is not None and b is not None and float(a @ b) >= PIXEL_SIMILARITY:
            pairs.append((i, j, similarity))
    known = {(i, j) for i, j, _ in pairs}
    by_hash: dict[str, list[int]] = {}
    for index, sha in enumerate(hashes):
        by_hash.setdefault(sha, []).append(index)
    for copies in by_hash.values():
        for k, i in enumerate(copies):
            for j in copies[k + 1:]:
                if (i, j) not in known:
                    pairs.append((i, j, 1.0))
    pairs.sort(key=lambda pair: -pair[2])
    return pairs[:limit]


def similar_pairs(unit: np.ndarray, threshold: float, limit: int = 20 * MAX_NEAR_DUPLICATES) -> list[tuple[int, int, float]]:
    """``(i, j, similarity)`` with ``i < j`` for rows at least ``threshold`` alike, most alike first."""
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(unit), 1024):
        similarity = unit[start:start + 1024] @ unit.T
        rows, cols = np.nonzero(similarity >= threshold)
        for row, col in zip(rows.tolist(), cols.tolist()):
            if col > start + row:
                pairs.append((start + row, col, float(similarity[row, col])))
    pairs.sort(key=lambda pair: -pair[2])
    return pairs[:limit]


def pixel_fingerprint(path: Path, side: int = FINGERPRINT_SIDE) -> np.ndarray | None:
    """The picture squeezed to ``side`` x ``side`` colour pixels, centred and of length one."""
    from transfer.data.images import ImageError, thumbnail

    try:
        image = thumbnail(path, 4 * side).resize((side, side))
    except (ImageError, OSError):
        return None
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = (pixels - pixels.mean(axis=(0, 1))).ravel()  # per channel: the layout counts, not the colour cast
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 0 else None


def neighbour_similarity(unit: np.ndarray, labels: np.ndarray, hashes: list[str]) -> np.ndarray:
    """Per picture: the best, over classes, of its mean similarity to its nearest pictures of that class.

    Copies of the picture itself do not count as neighbours.
    """
    n = len(unit)
    best = np.full(n, -1.0)
    sha = np.array(hashes)
    for start in range(0, n, 1024):
        similarity = unit[start:start + 1024] @ unit.T
        rows = np.arange(start, min(n, start + 1024))
        similarity[sha[rows][:, None] == sha[None, :]] = -np.inf
        for label in np.unique(labels):
            members = similarity[:, labels == label]
            k = min(NEIGHBOURS, members.shape[1])
            if k == 0:
                continue
            top = -np.sort(-members, axis=1)[:, :k]
            top = np.where(np.isfinite(top), top, np.nan)
            with np.errstate(all="ignore"):
                mean = np.nanmean(top, axis=1)
            best[rows] = np.fmax(best[rows], np.nan_to_num(mean, nan=-1.0))
    return best


def find_outliers(unit: np.ndarray, labels: np.ndarray, hashes: list[str]) -> list[tuple[int, float]]:
    """``(picture, robust z-score)`` for pictures unusually far from every class, furthest first."""
    closeness = neighbour_similarity(unit, labels, hashes)
    median = np.median(closeness)
    spread = 1.4826 * np.median(np.abs(closeness - median)) or 1e-6
    z = (median - closeness) / spread
    flagged = np.flatnonzero(z >= OUTLIER_Z)
    flagged = flagged[np.argsort(-z[flagged], kind="stable")]
    cap = max(1, int(MAX_OUTLIER_SHARE * len(unit)))
    return [(int(i), float(z[i])) for i in flagged[:cap]]


# --------------------------------------------------------------------------- the feature map


def feature_map(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` coordinates: t-SNE (after PCA to at most 50 dimensions) for 10 or more
    pictures, PCA alone below that, where t-SNE's neighbourhoods mean nothing."""
    # threadpoolctl limits the libraries already loaded: sklearn's OpenMP comes with TSNE.
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n == 0:
        return np.zeros((0, 2))
    if n < 3:
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    unit = unit_rows(features)
    reduced = PCA(n_components=min(50, n - 1, unit.shape[1]), random_state=seed).fit_transform(unit)
    if n < 10:
        return reduced[:, :2] if reduced.shape[1] >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
    perplexity = float(min(30.0, (n - 1) / 3))
    with threadpool_limits(limits=free_cores()):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def map_sample(n: int, seed: int = 0) -> np.ndarray:
    """Which pictures the map shows: all of them, or an even random share of large sets."""
    if n <= MAX_MAP_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_MAP_POINTS, replace=False))


# --------------------------------------------------------------------------- the whole audit


def audit_dataset(dataset, *, backbone: str | None = None, image_size: int | None = None, seed: int = 0,
                  with_map: bool = False, progress: Progress | None = None) -> AuditResult:
    """Audit every picture of a :class:`transfer.data.samples.Dataset` (training and validation)."""
    from transfer.training.config import DEFAULT_BACKBONE

    started = time.perf_counter()
    backbone = backbone or DEFAULT_BACKBONE
    samples = list(dataset.samples)
    if len(dataset.classes) < 2:
        raise AuditError("Checking labels needs at least two classes.")
    if len(samples) > MAX_AUDIT_PICTURES:
        raise AuditError(f"The audit handles at most {MAX_AUDIT_PICTURES:,} pictures; this data set has "
                         f"{len(samples):,}. Check a smaller part of it.")
    labels = np.array([dataset.label_index(s.label) for s in samples])
    extracted = picture_features(samples, backbone, image_size, progress=progress)
    folds = fold_count(labels)
    probabilities = out_of_fold_probabilities(extracted.features, labels, len(dataset.classes), folds=folds,
                                              seed=seed, progress=progress)
    unit = unit_rows(extracted.features)
    hashes = [s.sha256 for s in samples]
    root = Path(dataset.root)
    names = [relative_name(s.path, root) for s in samples]
    classes = list(dataset.classes)
    result = AuditResult(root=str(root), backbone=backbone, classes=classes, pictures=len(samples), folds=folds,
                         seconds=0.0, feature_seconds=round(extracted.seconds, 3),
                         features_cached=extracted.cached, features_computed=extracted.computed)
    for i, suggested, score in find_suspects(probabilities, labels):
        result.suspects.append(Suspect(names[i], samples[i].label, classes[suggested], round(score, 4),
                                       round(float(probabilities[i, labels[i]]), 4),
                                       round(float(probabilities[i, suggested]), 4), samples[i].split, hashes[i]))
    for i, j, similarity in find_near_duplicates(unit, [s.path for s in samples], hashes):
        result.near_duplicates.append(_near_duplicate(samples, names, i, j, similarity))
    for i, z in find_outliers(unit, labels, hashes):
        result.outliers.append(Outlier(names[i], samples[i].label, samples[i].split, round(z, 2), hashes[i]))
    if with_map:
        if progress:
            progress("map", 0, 1)
        result.map = _map_points(extracted.features, samples, names, {s.path for s in result.suspects}, seed)
        if progress:
            progress("map", 1, 1)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _near_duplicate(samples, names, i: int, j: int, similarity: float) -> NearDuplicate:
    a, b = samples[i], samples[j]
    if a.split != b.split:
        kind = "leakage"
    elif a.label != b.label:
        kind = "label_conflict"
    else:
        kind = "within_class"
    return NearDuplicate(names[i], names[j], round(min(1.0, similarity), 4), [a.label, b.label], [a.split, b.split],
                         kind, a.sha256 == b.sha256)


def _map_points(features: np.ndarray, samples, names, suspects: set[str], seed: int) -> list[dict]:
    shown = map_sample(len(samples), seed)
    coordinates = feature_map(features[shown], seed)
    return [{"path": names[i], "label": samples[i].label, "split": samples[i].split,
             "x": round(float(x), 3), "y": round(float(y), 3), "suspect": names[i] in suspects}
            for i, (x, y) in zip(shown.tolist(), coordinates)]


def run_feature_map(run_dir: Path | str, progress: Progress | None = None) -> dict:
    """The map of a finished run's validation pictures, right and wrong answers marked."""
    from transfer.data.dataset import load_dataset
    from transfer.data.samples import Dataset
    from transfer.analysis.evaluate import load_evaluation

    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", {}) or {}
    source = config.get("dataset")
    if isinstance(source, dict):
        dataset = Dataset.from_dict(source)
    elif isinstance(source, str) and Path(source).exists():
        dataset = load_dataset(source, val_fraction=config.get("val_fraction", 0.2), seed=config.get("split_seed", 0))
    else:
        raise AuditError("This run's pictures are no longer where it found them, so its map cannot be drawn.")
    evaluation = load_evaluation(run_dir)
    by_hash = {s.sha256: s for s in dataset.val}
    pairs = [(p, by_hash[p.sha256]) for p in evaluation.predictions if p.sha256 in by_hash]
    if not pairs:
        raise AuditError("None of this run's validation pictures are on disk any more.")
    shown = map_sample(len(pairs))
    pairs = [pairs[i] for i in shown]
    extracted = picture_features([sample for _, sample in pairs], config.get("backbone") or "efficientnet_lite0",
                                 config.get("image_size"), progress=progress)
    if progress:
        progress("map", 0, 1)
    coordinates = feature_map(extracted.features)
    points = [{"path": prediction.path, "label": evaluation.label(prediction.true_index),
               "predicted": evaluation.label(prediction.predicted_index), "correct": prediction.correct,
               "x": round(float(x), 3), "y": round(float(y), 3)}
              for (prediction, _), (x, y) in zip(pairs, coordinates)]
    return {"classes": evaluation.classes, "points": points}


# --------------------------------------------------------------------------- as a job


def _progress_writer(folder: Path) -> Progress:
    last = [0.0]

    def write(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.3:
            return  # a few updates a second are plenty for a progress bar
        last[0] = now
        atomic_write_json(folder / PROGRESS_FILE, {"phase": phase, "done": done, "total": total, "time": time.time()})

    return write


def run_job(folder: Path, work: Callable[[Progress], dict]) -> int:
    """Run ``work`` with progress written into ``folder``; its result or error lands there too."""
    from transfer.core.files import try_lock

    folder.mkdir(parents=True, exist_ok=True)
    lock = try_lock(folder / JOB_LOCK)
    if lock is None:
        return 0  # the same job is already running
    try:
        result = work(_progress_writer(folder))
    except TransferError as error:
        atomic_write_json(folder / ERROR_FILE, {"error": str(error)})
        return 2
    except Exception as error:  # noqa: BLE001 - the page shows a sentence; the details go to the log
        traceback.print_exc()
        atomic_write_json(folder / ERROR_FILE, {"error": f"The check stopped unexpectedly ({type(error).__name__})."})
        return 1
    else:
        atomic_write_json(folder / RESULT_FILE, result)
        return 0
    finally:
        os.close(lock)


def audit_job(run) -> None:
    """The worker's side of an audit or a map started from a page: ``run.config["arguments"]``
    are :func:`main`'s. Through the queue it runs like training does, at the workers' lower CPU
    priority and with their thread cap; its result or error lands in its own folder, which the
    page reads."""
    run.append_event({"type": "info", "message": "Audit job starting.", "nice": os.getpriority(os.PRIO_PROCESS, 0),
                      "threads": os.environ.get("TRANSFER_WORKER_THREADS")})
    main([str(argument) for argument in run.config.get("arguments") or []])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.analysis.audit", description="Run an audit or a map as a job.")
    sub = parser.add_subparsers(dest="job", required=True)
    data = sub.add_parser("dataset", help="audit a data set, with its feature map")
    data.add_argument("source")
    data.add_argument("folder", help="where progress.json and result.json go")
    data.add_argument("--val-fraction", type=float, default=0.2)
    data.add_argument("--split-seed", type=int, default=0)
    data.add_argument("--backbone", default=None)
    run = sub.add_parser("run-map", help="the feature map of a finished run's validation pictures")
    run.add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.job == "dataset":
        from transfer.data.dataset import load_dataset

        def work(progress: Progress) -> dict:
            dataset = load_dataset(Path(args.source), val_fraction=args.val_fraction, seed=args.split_seed)
            return audit_dataset(dataset, backbone=args.backbone, with_map=True, progress=progress).to_dict()

        return run_job(Path(args.folder), work)
    return run_job(Path(args.run_dir) / RUN_MAP_FOLDER, lambda progress: run_feature_map(args.run_dir, progress))


if __name__ == "__main__":
    sys.exit(main())
