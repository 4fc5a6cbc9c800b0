"""Label audit with labels flipped on purpose: the suspects of the rule the audit used before
(our own confident-learning threshold) against cleanlab's, on the same out-of-fold probabilities,
and what a whole audit costs.

    python benchmarks/bench_audit.py [--data DIR] [--flip 0.10] [--seeds 0 1 2 3 4] [--all-filters] [--no-timing]

For each data set (ants/bees from ``--data``, then the demo data set shipped with the package:
4 classes, 143 clip-art pictures) the backbone's features are computed once. For each seed,
``--flip`` of the pictures get another class (the flips are drawn per seed; with several classes
the wrong class is drawn too), the audit's k-fold heads give out-of-fold probabilities, and both
rules list their suspects from the *same* probabilities. Scores are summed over the seeds:

- precision and recall of the whole list of suspects (what the gallery shows);
- precision of the first k suspects, k = number of flips (= recall at k): how well the list is
  ranked, the clearest first.

``--all-filters`` adds every ``filter_by`` x ranking of ``cleanlab.filter.find_label_issues``
(how the audit's choice was made). Unless ``--no-timing``, a whole audit of a flipped copy of
ants/bees then runs twice with a private, empty cache (cold: the backbone computes every
feature; warm: features from the cache), phase by phase. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")
FILTERS = ["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence"]
RANKINGS = ["self_confidence", "normalized_margin", "confidence_weighted_entropy"]


def previous_suspects(probabilities: np.ndarray, labels: np.ndarray) -> list[int]:
    """The audit's own rule before cleanlab, kept here as the baseline: another class more likely
    than the given one and at least as likely as that class's own pictures are on average;
    ranked by p(suggested) - p(given)."""
    n, num_classes = probabilities.shape
    given = probabilities[np.arange(n), labels]
    thresholds = np.array([probabilities[labels == c, c].mean() if np.any(labels == c) else 1.0
                           for c in range(num_classes)])
    others = probabilities.copy()
    others[np.arange(n), labels] = -1.0
    suggested = others.argmax(axis=1)
    p_suggested = others[np.arange(n), suggested]
    flagged = np.flatnonzero((p_suggested > given) & (p_suggested >= thresholds[suggested]))
    order = np.argsort(-(p_suggested[flagged] - given[flagged]), kind="stable")
    return flagged[order].tolist()


def cleanlab_ranking(filter_by: str, rank_by: str):
    def rank(probabilities: np.ndarray, labels: np.ndarray) -> list[int]:
        from cleanlab.filter import find_label_issues

        return find_label_issues(labels, probabilities, filter_by=filter_by, return_indices_ranked_by=rank_by,
                                 n_jobs=1).tolist()
    return rank


def the_audits_ranking(probabilities: np.ndarray, labels: np.ndarray) -> list[int]:
    from transfer.analysis.audit import find_suspects

    return [index for index, _suggested, _score in find_suspects(probabilities, labels)]


def flipped_labels(labels: np.ndarray, num_classes: int, share: float, seed: int) -> tuple[np.ndarray, set[int]]:
    """``labels`` with ``share`` of them moved to another class (seeded), and which ones moved."""
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(labels), round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[moved] = (labels[moved] + rng.integers(1, num_classes, len(moved))) % num_classes
    return noisy, set(moved.tolist())


def add_score(total: dict, ranked: list[int], flipped: set[int]) -> None:
    total["flips"] += len(flipped)
    total["listed"] += len(ranked)
    total["hits"] += len(set(ranked) & flipped)
    total["hits_top_k"] += len(set(ranked[:len(flipped)]) & flipped)


def summary(total: dict) -> dict:
    return {**total, "precision": round(total["hits"] / max(1, total["listed"]), 3),
            "recall": round(total["hits"] / max(1, total["flips"]), 3),
            "precision_top_k": round(total["hits_top_k"] / max(1, total["flips"]), 3)}


def compare_rankings(name: str, root: Path, rankers: dict, share: float, seeds: list[int], backbone: str) -> list[dict]:
    from transfer.analysis.audit import fold_count, out_of_fold_probabilities, picture_features
    from transfer.data.dataset import load_dataset

    dataset = load_dataset(root)
    labels = np.array([dataset.label_index(s.label) for s in dataset.samples])
    features = picture_features(list(dataset.samples), backbone).features
    totals = {method: dict.fromkeys(("flips", "listed", "hits", "hits_top_k"), 0) for method in rankers}
    for seed in seeds:
        noisy, flipped = flipped_labels(labels, len(dataset.classes), share, seed)
        probabilities = out_of_fold_probabilities(features, noisy, len(dataset.classes), folds=fold_count(noisy),
                                                  seed=seed)
        for method, rank in rankers.items():
            add_score(totals[method], rank(probabilities, noisy), flipped)
    return [{"data": name, "pictures": len(labels), "method": method, **summary(total)}
            for method, total in totals.items()]


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def flipped_copy(data: Path, target: Path, share: float, seed: int) -> set[str]:
    """A copy of ``data`` with ``share`` of its pictures filed under another class; returns their paths."""
    from transfer.data.dataset import load_dataset

    dataset = load_dataset(data)
    samples = sorted(dataset.samples, key=lambda s: str(s.path))
    labels = np.array([dataset.label_index(s.label) for s in samples])
    noisy, moved = flipped_labels(labels, len(dataset.classes), share, seed)
    flipped = set()
    for index, sample in enumerate(samples):
        relative = sample.path.relative_to(dataset.root)
        if index in moved:
            parts = list(relative.parts)
            parts[parts.index(sample.label)] = dataset.classes[noisy[index]]
            relative = Path(*parts)
            flipped.add(relative.as_posix())
        link_or_copy(sample.path, target / relative)
    return flipped


TIMED_STEPS = {"picture_features": "features", "out_of_fold_probabilities": "heads", "find_suspects": "suspects",
               "find_near_duplicates": "near_duplicates", "find_outliers": "outliers", "feature_map": "map"}


def timed_steps(audit_module, phases: dict) -> None:
    """Wrap the audit's steps so that each adds its seconds to ``phases`` (bench only)."""
    for function_name, phase in TIMED_STEPS.items():
        original = getattr(audit_module, function_name)

        def timed(*args, _original=original, _phase=phase, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                phases[_phase] = phases.get(_phase, 0.0) + time.perf_counter() - started

        setattr(audit_module, function_name, timed)


def time_whole_audit(data: Path, temp: Path, share: float, seed: int, backbone: str) -> list[dict]:
    """A whole audit (with its feature map, as the Data page asks) of a flipped copy, cold then warm."""
    from transfer.analysis import audit
    from transfer.data.dataset import load_dataset

    copy = temp / "flipped"
    flipped = flipped_copy(data, copy, share, seed)
    phases: dict[str, float] = {}
    timed_steps(audit, phases)
    rows = []
    for label in ("cold cache", "warm cache"):
        phases.clear()
        started = time.perf_counter()
        dataset = load_dataset(copy)
        loaded = time.perf_counter()
        result = audit.audit_dataset(dataset, backbone=backbone, seed=seed, with_map=True)
        ended = time.perf_counter()
        listed = {s.path for s in result.suspects}
        rows.append({"run": label, "pictures": result.pictures, "flips": len(flipped),
                     "suspects": len(listed), "flips_listed": len(listed & flipped),
                     "check_seconds": round(loaded - started, 2), "audit_seconds": round(ended - loaded, 2),
                     "phase_seconds": {k: round(v, 2) for k, v in phases.items()}})
    return rows


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--flip", type=float, default=0.10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--all-filters", action="store_true", help="also every filter and ranking of cleanlab")
    parser.add_argument("--no-timing", action="store_true", help="skip the timed whole audit")
    args = parser.parse_args()
    rankers = {"before: own rule": previous_suspects, "after: the audit (cleanlab)": the_audits_ranking}
    if args.all_filters:
        rankers.update({f"cleanlab {f} / {r}": cleanlab_ranking(f, r) for f in FILTERS for r in RANKINGS})
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as temp:
        os.environ["TRANSFER_HOME"] = str(Path(temp) / "home")
        from transfer.data.dataset import demo_dataset_path

        data_sets = [("demo data", demo_dataset_path())]
        if args.data.is_dir():
            data_sets.insert(0, ("ants/bees", args.data))
        else:
            print(f"{args.data} is not on this machine: only the demo data set is measured", file=sys.stderr)
        rows = [row for name, root in data_sets
                for row in compare_rankings(name, root, rankers, args.flip, args.seeds, args.backbone)]
        print(f"Suspects from the same out-of-fold probabilities, {args.flip:.0%} of labels flipped, "
              f"seeds {args.seeds} summed\n")
        print_table(rows, ["data", "pictures", "method", "flips", "listed", "hits", "precision", "recall",
                           "precision_top_k"])
        timing = []
        if args.data.is_dir() and not args.no_timing:
            os.environ["TRANSFER_HOME"] = str(Path(temp) / "timing-home")  # a cold cache again
            timing = time_whole_audit(args.data, Path(temp), args.flip, args.seeds[0], args.backbone)
            for row in timing:
                row["phases"] = " ".join(f"{k}={v}" for k, v in row["phase_seconds"].items())
            print(f"A whole audit of ants/bees (seed {args.seeds[0]}), with its feature map\n")
            print_table(timing, ["run", "pictures", "flips", "suspects", "flips_listed", "check_seconds",
                                 "audit_seconds", "phases"])
    print(json.dumps({"benchmark": "audit", "flip": args.flip, "seeds": args.seeds, "backbone": args.backbone,
                      "rankings": rows, "whole_audit": timing, "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
