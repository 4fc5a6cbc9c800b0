"""Which unlabelled pictures to label first, and what the model guesses they show.

With few labels, the pictures worth labelling are the ones that stand for much of what nothing
labelled covers yet (in the spirit of TypiClust, Hacohen et al. 2022): the pool and the
labelled pictures are clustered together in the backbone's feature space into as many groups
as there will be labels after this round; each group without a labelled picture offers its
most *typical* picture (the one closest to its nearest neighbours), largest group first.
Picking the least certain pictures instead picks odd ones out, which teach little while labels
are scarce (measured in ``benchmarks/bench_suggest.py``).

Once a run exists and every class has a few labelled pictures (``HESITATION_FROM_PER_CLASS``),
where the model hesitates becomes worth a label too: every other suggestion is then the pool
picture with the smallest margin between the model's two likeliest classes.

When the labelled classes are uneven (``is_uneven``), labelling in that order piles labels onto
the classes the pool holds most of. Asked to (``even_out``), the order favours the pictures the
model guesses to be of the classes with the fewest labels (:func:`favour_fewest_labelled`), so
that labelling evens the classes out. It is not the default: the features head weighs classes by
their size, and on uneven starts evening the labels out cost accuracy (measured in
``benchmarks/bench_suggest.py --uneven-only``).

Features come from the feature cache (:mod:`transfer.models.features`), so a pool is read by the
backbone once; ``python -m transfer.analysis.suggest`` runs as a job writing into a folder, so the web
server only reads files. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from transfer.core import paths
from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_bytes, atomic_write_json, read_json

MAX_CLUSTERS = 500
REDUCED_DIMENSIONS = 64
TYPICALITY_NEIGHBOURS = 20
MAX_TYPICALITY_REFERENCE = 1000  # neighbours are looked for among at most this many members of a group
HESITATION_FROM_PER_CLASS = 5
DEFAULT_COUNT = 20
ROUND_SIZE = 20  # the labels one round of suggestions plans for
MAX_COUNT = 1000
MAX_REMEMBERED = 50_000  # feature vectors kept in a memo (about 250 MB for 1,280 values each)
UNEVEN_RATIO = 1.5  # the largest class has this many times the labels of the smallest (and 2 more): uneven
BALANCE_CANDIDATES = 3  # when evening classes out, the order chooses among this many times the pictures asked for

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class SuggestError(TransferError):
    """Suggestions cannot be made; the message says what to do."""


@dataclass
class Suggestion:
    file: str  # the path inside the pool, as the pool names it
    guess: str | None
    probability: float | None
    unknown: bool | None
    reason: str
    sha256: str
    kind: str  # "typical" | "hesitant" | "next"


@dataclass
class SuggestResult:
    pool: str
    run: str | None
    backbone: str
    pictures: int
    labelled: int  # labelled pictures, each counted once
    seconds: float
    features_cached: int
    features_computed: int
    suggestions: list[Suggestion] = field(default_factory=list)
    labelled_per_class: dict[str, int] = field(default_factory=dict)  # the run's classes; empty without a run
    evened: bool = False  # whether the order favours the classes with the fewest labels

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- the ordering


@dataclass
class Pick:
    index: int  # into the pool
    kind: str
    group_size: int = 0


def reduce_features(features: np.ndarray, dimensions: int = REDUCED_DIMENSIONS, seed: int = 0) -> np.ndarray:
    """Centred, unit-length rows, projected on their main directions (PCA) and made unit-length again."""
    from transfer.analysis.audit import unit_rows

    unit = unit_rows(features.astype(np.float32))
    components = min(dimensions, unit.shape[0] - 1, unit.shape[1])
    if components >= 2:
        centred = (unit - unit.mean(axis=0, keepdims=True)).astype(np.float32)
        if len(centred) <= centred.shape[1]:  # few pictures: the SVD of the pictures themselves is quicker
            _, _, rows = np.linalg.svd(centred, full_matrices=False)
            directions = rows[:components].T
        else:  # many: the covariance is only dim x dim, whatever the number of pictures (memory-flat)
            _, vectors = np.linalg.eigh(centred.T @ centred)
            directions = vectors[:, ::-1][:, :components]
        unit = centred @ directions
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    return (unit / np.maximum(norms, 1e-12)).astype(np.float32)


def cluster(points: np.ndarray, groups: int, seed: int = 0) -> np.ndarray:
    """A group number per point (k-means; the mini-batch kind for many groups)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    groups = max(1, min(groups, len(points)))
    if groups == 1:
        return np.zeros(len(points), dtype=np.int64)
    if groups > 50:
        model = MiniBatchKMeans(n_clusters=groups, random_state=seed, n_init=3, batch_size=2048)
    else:
        model = KMeans(n_clusters=groups, random_state=seed, n_init=3)
    return model.fit_predict(points).astype(np.int64)


def typicality(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per point: 1 / mean distance to its nearest neighbours in ``points`` (high: typical)."""
    n = len(points)
    if n == 1:
        return np.ones(1)
    reference = points
    if n > MAX_TYPICALITY_REFERENCE:  # memory stays flat however large the group
        reference = points[np.random.default_rng(seed).choice(n, MAX_TYPICALITY_REFERENCE, replace=False)]
    k = min(TYPICALITY_NEIGHBOURS, len(reference) - 1)
    result = np.empty(n)
    for start in range(0, n, 1024):
        distances = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * points[start:start + 1024] @ reference.T))
        nearest = np.sort(distances, axis=1)[:, 1:k + 1]  # the first is the point itself (or its twin)
        result[start:start + 1024] = 1.0 / (nearest.mean(axis=1) + 1e-6)
    return result


def typical_picks(pool: np.ndarray, labelled: np.ndarray, count: int, seed: int = 0) -> list[Pick]:
    """Up to ``count`` pool pictures, each the most typical of a group no labelled picture is in.

    ``pool`` and ``labelled`` are reduced features (see :func:`reduce_features`, computed on both
    together). Groups: as many as labels after this round (at most ``MAX_CLUSTERS``); the
    uncovered ones offer their picture largest group first. When uncovered groups run out, the
    groups with the fewest labels per picture offer their next most typical picture.
    """
    if len(pool) == 0 or count <= 0:
        return []
    together = np.concatenate([pool, labelled]) if len(labelled) else pool
    # A long list is planned one round of labels ahead: more groups than that would split the pool
    # into fragments, and the later picks follow the groups with the fewest labels anyway.
    groups = cluster(together, min(MAX_CLUSTERS, len(labelled) + min(count, ROUND_SIZE)), seed)
    pool_groups, labelled_groups = groups[:len(pool)], groups[len(pool):]
    labelled_in = np.bincount(labelled_groups, minlength=groups.max() + 1)
    candidates: dict[int, list[int]] = {}  # group -> pool indices, most typical first
    for group in np.unique(pool_groups):
        members = np.flatnonzero(pool_groups == group)
        scores = typicality(pool[members], seed)
        candidates[int(group)] = members[np.argsort(-scores, kind="stable")].tolist()
    sizes = {g: len(m) for g, m in candidates.items()}
    picks: list[Pick] = []
    taken = {g: 0 for g in candidates}
    while len(picks) < count and any(taken[g] < sizes[g] for g in candidates):
        # Fewest labels (given and picked) per picture first; among equals, the largest group.
        open_groups = [g for g in candidates if taken[g] < sizes[g]]
        group = min(open_groups, key=lambda g: ((labelled_in[g] + taken[g]) / sizes[g], -sizes[g], g))
        kind = "typical" if labelled_in[group] + taken[group] == 0 else "next"
        picks.append(Pick(candidates[group][taken[group]], kind, sizes[group]))
        taken[group] += 1
    return picks


def hesitation_order(probabilities: np.ndarray) -> np.ndarray:
    """Pool indices, the smallest margin between the two likeliest classes first."""
    if probabilities.shape[1] < 2:
        return np.arange(len(probabilities))
    top = -np.sort(-probabilities, axis=1)
    return np.argsort(top[:, 0] - top[:, 1], kind="stable")


def order_pool(pool: np.ndarray, labelled: np.ndarray, count: int, *, probabilities: np.ndarray | None = None,
               labelled_per_class: float = 0.0, seed: int = 0) -> list[Pick]:
    """The ``count`` pool pictures to label first (reduced features in, best first)."""
    count = min(count, len(pool))
    hesitate = probabilities is not None and labelled_per_class >= HESITATION_FROM_PER_CLASS
    typical = typical_picks(pool, labelled, count if not hesitate else (count + 1) // 2, seed)
    if not hesitate:
        return typical
    chosen = {p.index for p in typical}
    hesitant = [Pick(int(i), "hesitant") for i in hesitation_order(probabilities) if int(i) not in chosen]
    merged: list[Pick] = []
    for position in range(count):  # typical, hesitant, typical, ...
        source = typical if position % 2 == 0 and typical else hesitant or typical
        if not source:
            break
        merged.append(source.pop(0))
    return merged


def is_uneven(counts: list[int]) -> bool:
    """Whether labelled pictures per class are uneven enough that the order should even them out."""
    if len(counts) < 2:
        return False
    most, fewest = max(counts), min(counts)
    return most - fewest >= 2 and most >= UNEVEN_RATIO * max(1, fewest)


def favour_fewest_labelled(picks: list[Pick], guesses: np.ndarray, counts: list[int], count: int) -> list[Pick]:
    """Reorder ``picks`` so that labelling them evens the classes out.

    ``guesses`` is the model's class (an index) per pool picture, ``counts`` the labelled pictures
    per class. Each next pick is the earliest remaining one whose guessed class has the fewest
    labels once the picks before it are labelled as guessed; the given order breaks ties, so the
    suggestions stay typical or hesitant within a class.
    """
    projected = [int(c) for c in counts]
    remaining = list(range(len(picks)))
    chosen: list[Pick] = []
    while remaining and len(chosen) < count:
        position = min(remaining, key=lambda i: (projected[int(guesses[picks[i].index])], i))
        remaining.remove(position)
        projected[int(guesses[picks[position].index])] += 1
        chosen.append(picks[position])
    return chosen


def label_counts(labelled: list, classes: list[str]) -> list[int]:
    """Labelled pictures per class of ``classes`` (each picture once; labels outside them are not counted)."""
    index = {name: i for i, name in enumerate(classes)}
    counts = [0] * len(classes)
    for sample in labelled:
        if sample.label in index:
            counts[index[sample.label]] += 1
    return counts


def reason_for(pick: Pick, probabilities: np.ndarray | None, classes: list[str]) -> str:
    """A short sentence saying why a picture is worth a label."""
    if pick.kind == "hesitant" and probabilities is not None:
        row = probabilities[pick.index]
        first, second = np.argsort(-row)[:2]
        return (f"the model hesitates between {classes[first]} and {classes[second]} "
                f"({row[first]:.0%} / {row[second]:.0%})")
    if pick.kind == "typical":
        others = pick.group_size - 1
        return (f"typical of {pick.group_size} pictures nothing labelled resembles yet" if others else
                "unlike any other picture, and nothing labelled resembles it")
    return f"typical of a group of {pick.group_size} pictures with few labels"


# --------------------------------------------------------------------------- features and the run


def _memo_path(backbone: str, image_size: int | None) -> Path | None:
    """Where this backbone's features of pools are remembered together, or None when the weights'
    identity cannot be told without loading PyTorch (then only the feature cache is used).

    Named by what changes the features: the backbone, its weights file (name, size, time), the
    input size and the pixel rules; read without importing torch, so asking again is quick.
    """
    from transfer.data.picture import PIXEL_RULES_VERSION
    from transfer.models.catalogue import get_backbone

    try:
        entry = get_backbone(backbone)
        file = entry.weights_file() if entry.weights_file else None
    except (TransferError, OSError):
        return None
    if file is None or not Path(file).is_file():
        return None
    stat = Path(file).stat()
    key = json.dumps([backbone, image_size, Path(file).name, stat.st_size, int(stat.st_mtime), PIXEL_RULES_VERSION])
    return paths.cache_dir("suggest") / f"features-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


@dataclass
class KnownFeatures:
    features: np.ndarray
    cached: int
    computed: int


def known_features(samples: list, backbone: str, image_size: int | None,
                   progress: Progress | None = None) -> KnownFeatures:
    """Centre-crop features of ``samples``: from this module's memo when it holds them all, else
    from the feature cache (computing what is missing) and then remembered."""
    memo = _memo_path(backbone, image_size)
    remembered: dict[str, np.ndarray] = {}
    if memo is not None and memo.is_file():
        try:
            with np.load(memo, allow_pickle=False) as stored:
                remembered = dict(zip(stored["sha256"].tolist(), stored["features"]))
        except (OSError, ValueError, KeyError):
            remembered = {}
    if samples and all(s.sha256 in remembered for s in samples):
        return KnownFeatures(np.stack([remembered[s.sha256] for s in samples]), len(samples), 0)
    from transfer.analysis.audit import picture_features

    extracted = picture_features(samples, backbone, image_size, progress=progress)
    if memo is not None:
        remembered.update({s.sha256: row for s, row in zip(samples, extracted.features)})
        hashes = list(remembered)[-MAX_REMEMBERED:]
        buffer = io.BytesIO()
        np.savez(buffer, sha256=np.array(hashes), features=np.stack([remembered[h] for h in hashes]))
        atomic_write_bytes(memo, buffer.getvalue())
    return KnownFeatures(extracted.features, extracted.cached, extracted.computed)


def unknown_flags(run_dir: Path | None, features: np.ndarray) -> list[bool | None]:
    """Whether each pool picture looks unlike every class of the run ("None of these"), at the
    normal strictness (transfer.models.novelty). The pool's features are the pretrained backbone's,
    which is the space a features run's reference lives in; a fine-tuned or scratch run's reference
    is in its own trained space, so there the answer is ``None`` (not known) rather than a guess."""
    from transfer.models.novelty import load_reference

    reference = load_reference(run_dir) if run_dir is not None else None
    if reference is None or _run_method(run_dir) != "features" or reference.vectors.shape[1] != features.shape[-1]:
        return [None] * len(features)
    threshold = reference.threshold("normal")
    return [bool(score > threshold) for score in reference.score(features)]


def _run_method(run_dir: Path) -> str:
    try:
        return str(json.loads((Path(run_dir) / "config.json").read_text()).get("method", ""))
    except (OSError, ValueError):
        return ""


@dataclass
class RunContext:
    run_dir: Path
    config: dict
    classes: list[str]
    backbone: str
    image_size: int | None
    labelled: list  # the run's pictures (transfer.data.samples.Sample), all labelled


def read_run(run_dir: Path | str) -> RunContext:
    """What suggestions need from a finished run: its classes, backbone and labelled pictures."""
    from transfer.data.dataset import load_dataset
    from transfer.data.samples import Dataset
    from transfer.models.model_io import read_model_info

    run_dir = Path(run_dir)
    info = read_model_info(run_dir)
    config = read_json(run_dir / "config.json", {}) or {}
    source = config.get("dataset")
    labelled = []
    if isinstance(source, dict):
        labelled = Dataset.from_dict(source).samples
    elif isinstance(source, str) and Path(source).exists():
        try:
            labelled = load_dataset(source, val_fraction=config.get("val_fraction", 0.2),
                                    seed=config.get("split_seed", 0)).samples
        except TransferError:
            labelled = []
    return RunContext(run_dir, config, [str(c) for c in info["classes"]], str(info.get("backbone") or ""),
                      config.get("image_size"), labelled)


def run_probabilities(run: RunContext, pictures: list, features: np.ndarray) -> np.ndarray:
    """The run's class probabilities for each pool picture, remembered per picture and weights file.

    A feature-transfer run's head reads exactly the cached features, so it answers from them;
    any other run's PyTorch model predicts the pictures, prepared as for validation.
    """
    weights = run.run_dir / "model.safetensors"
    stamp = f"{run.run_dir.resolve()}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}"
    memo = paths.cache_dir("suggest") / f"probabilities-{hashlib.sha256(stamp.encode()).hexdigest()[:20]}.json"
    known = read_json(memo, None) or {}
    missing = [i for i, p in enumerate(pictures) if p.sha256 not in known]
    if missing:
        rows = _compute_probabilities(run, [pictures[i] for i in missing], features[missing])
        known.update({pictures[i].sha256: [round(float(v), 6) for v in row] for i, row in zip(missing, rows)})
        atomic_write_json(memo, known)
    return np.array([known[p.sha256] for p in pictures], dtype=np.float32)


def _compute_probabilities(run: RunContext, pictures: list, features: np.ndarray) -> np.ndarray:
    import torch

    from transfer.models.model_io import load_trained_model

    model, _, preprocessing = load_trained_model(run.run_dir)
    if run.config.get("method") == "features" and not run.config.get("initial_weights"):
        from transfer.models.heads import head_module

        with torch.inference_mode():
            logits = head_module(model)(torch.from_numpy(np.ascontiguousarray(features)))
            return torch.softmax(logits.float(), dim=1).numpy()
    from transfer.data.augment import eval_transform
    from transfer.data.images import open_image

    rows = []
    for start in range(0, len(pictures), 64):
        batch = torch.stack([eval_transform(open_image(p.path, min_short_side=preprocessing.resize_size), preprocessing)
                             for p in pictures[start:start + 64]])
        with torch.inference_mode():
            rows.append(torch.softmax(model(batch).float(), dim=1).numpy())
    return np.concatenate(rows)


# --------------------------------------------------------------------------- the whole suggestion


def suggest(pool: Path | str, *, run_dir: Path | str | None = None, count: int = DEFAULT_COUNT,
            labelled: list | None = None, backbone: str | None = None, seed: int = 0,
            even_out: bool = False, progress: Progress | None = None) -> SuggestResult:
    """The ``count`` pictures of ``pool`` to label first, best first, each with the run's guess.

    ``labelled`` (pictures with labels, :class:`transfer.data.samples.Sample`) says what is covered
    already; the run's own pictures count as labelled too. Pool pictures whose content is among
    the labelled ones are not suggested again. With ``even_out``, uneven classes get the pictures
    the run guesses to be of their fewest-labelled classes first.
    """
    from transfer.training.config import DEFAULT_BACKBONE
    from transfer.data.pool import open_pool, pool_pictures

    started = time.perf_counter()
    if not 1 <= count <= MAX_COUNT:
        raise SuggestError(f"Ask for between 1 and {MAX_COUNT} suggestions, not {count}.")
    run = read_run(run_dir) if run_dir else None
    # The data set's pictures and the run's are mostly the same ones: each is counted once.
    covered = list({sample.sha256: sample for sample in (run.labelled if run else []) + list(labelled or [])}.values())
    known = {sample.sha256 for sample in covered}
    pictures = [p for p in pool_pictures(open_pool(pool)) if p.sha256 not in known]
    pictures = list({p.sha256: p for p in reversed(pictures)}.values())[::-1]  # copies count once
    if not pictures:
        raise SuggestError("Every picture of this pool is labelled already (or none is readable); "
                           "add pictures to the pool to get more suggestions.")
    backbone = (run.backbone if run else None) or backbone or DEFAULT_BACKBONE
    image_size = run.image_size if run else None
    samples = [p.as_sample() for p in pictures] + covered
    extracted = known_features(samples, backbone, image_size, progress)
    from threadpoolctl import threadpool_limits

    # One thread for the linear algebra: its pieces are small, and several BLAS threads waiting on
    # each other on a busy machine were five times slower than one (measured on 2 shared cores).
    with threadpool_limits(limits=1):
        reduced = reduce_features(extracted.features, seed=seed)
    pool_features = extracted.features[:len(pictures)]
    probabilities = run_probabilities(run, pictures, pool_features) if run else None
    counts = label_counts(covered, run.classes) if run else []
    evened = even_out and probabilities is not None and is_uneven(counts)
    if progress:
        progress("order", 0, 1)
    with threadpool_limits(limits=1):
        picks = order_pool(reduced[:len(pictures)], reduced[len(pictures):],
                           count * BALANCE_CANDIDATES if evened else count, probabilities=probabilities,
                           labelled_per_class=min(counts) if counts else 0.0, seed=seed)
    if evened:
        picks = favour_fewest_labelled(picks, probabilities.argmax(axis=1), counts, count)
    unknown = unknown_flags(run.run_dir if run else None, pool_features)
    result = SuggestResult(pool=str(pool), run=str(run_dir) if run_dir else None, backbone=backbone,
                           pictures=len(pictures), labelled=len(covered), seconds=0.0,
                           features_cached=extracted.cached, features_computed=extracted.computed,
                           labelled_per_class=dict(zip(run.classes, counts)) if run else {}, evened=evened)
    for pick in picks:
        picture = pictures[pick.index]
        guess = probability = None
        if probabilities is not None:
            best = int(np.argmax(probabilities[pick.index]))
            guess, probability = run.classes[best], round(float(probabilities[pick.index, best]), 4)
        result.suggestions.append(Suggestion(picture.name, guess, probability, unknown[pick.index],
                                             reason_for(pick, probabilities, run.classes if run else []),
                                             picture.sha256, pick.kind))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


# --------------------------------------------------------------------------- as a job


def suggest_job(run) -> None:
    """The worker's side of the label assist's suggestions: ``run.config["arguments"]`` are
    :func:`main`'s, run at the workers' CPU priority and thread cap like an audit."""
    main([str(argument) for argument in run.config.get("arguments") or []])


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.analysis.suggest POOL FOLDER [...]``: suggestions as a job writing into FOLDER."""
    from transfer.analysis.audit import run_job

    parser = argparse.ArgumentParser(prog="python -m transfer.analysis.suggest", description="Suggestions as a job.")
    parser.add_argument("pool")
    parser.add_argument("folder", help="where progress.json and result.json go")
    parser.add_argument("--run", default=None)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--dataset", default=None, help="the labelled data set (its pictures are covered)")
    parser.add_argument("--even-out", action="store_true", help="uneven classes: their fewest-labelled ones first")
    args = parser.parse_args(argv)

    def work(progress: Progress) -> dict:
        labelled = []
        if args.dataset and Path(args.dataset).exists():
            from transfer.data.pool import open_pool, pool_pictures

            # The data set's pictures are read like a pool's, so a data set still too small to train
            # on counts too; a picture's class is the folder it is in (``cat/x.jpg``, ``train/cat/x.jpg``).
            labelled = [replace(p.as_sample(), label=Path(p.name).parent.name)
                        for p in pool_pictures(open_pool(args.dataset))]
        run_dir = args.run if args.run and Path(args.run, "model.json").is_file() else None
        return suggest(args.pool, run_dir=run_dir, count=args.count, labelled=labelled, even_out=args.even_out,
                       progress=progress).to_dict()

    return run_job(Path(args.folder), work)


if __name__ == "__main__":
    sys.exit(main())
