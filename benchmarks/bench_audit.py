"""Label audit on ants/bees with labels flipped on purpose: how many flips come first, and how fast.

    python benchmarks/bench_audit.py [--data DIR] [--flip 0.10] [--seed 0]

Copies the data set into a temporary folder (hard links where possible), moves ``--flip`` of
the pictures of each split into the other class, then runs ``transfer.analysis.audit.audit_dataset``
twice with a private, empty cache: cold (the backbone computes every feature) and warm. The
flips are scored in the top N of the ranked suspects, N = the number of flips: precision
(= recall at N) and recall over the whole suspect list. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")


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
    rng = random.Random(seed)
    samples = sorted(dataset.samples, key=lambda s: str(s.path))
    flipped_indices = set(rng.sample(range(len(samples)), round(share * len(samples))))
    flipped = set()
    for index, sample in enumerate(samples):
        relative = sample.path.relative_to(dataset.root)
        if index in flipped_indices:
            others = [c for c in dataset.classes if c != sample.label]
            parts = list(relative.parts)
            parts[parts.index(sample.label)] = rng.choice(others)
            relative = Path(*parts)
            flipped.add(relative.as_posix())
        link_or_copy(sample.path, target / relative)
    return flipped


def score(result, flipped: set[str]) -> dict:
    ranked = [s.path for s in result.suspects]
    top = ranked[: len(flipped)]
    hits_top = len(set(top) & flipped)
    hits_all = len(set(ranked) & flipped)
    return {"flips": len(flipped), "suspects": len(ranked), "found_in_top_n": hits_top,
            "precision_at_n": round(hits_top / len(flipped), 3),
            "recall_all_suspects": round(hits_all / len(flipped), 3),
            "precision_all_suspects": round(hits_all / max(1, len(ranked)), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--flip", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} is not on this machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as temp:
        os.environ["TRANSFER_HOME"] = str(Path(temp) / "home")
        from transfer.analysis.audit import audit_dataset
        from transfer.data.dataset import load_dataset

        copy = Path(temp) / "flipped"
        flipped = flipped_copy(args.data, copy, args.flip, args.seed)
        rows = []
        for label in ("cold cache", "warm cache"):
            started = time.perf_counter()
            dataset = load_dataset(copy)
            result = audit_dataset(dataset, backbone=args.backbone, seed=args.seed)
            seconds = time.perf_counter() - started
            rows.append({"run": label, "pictures": result.pictures, "seconds": round(seconds, 2),
                         "feature_seconds": result.feature_seconds, **score(result, flipped),
                         "near_duplicates": len(result.near_duplicates),
                         "leakage_pairs": sum(d.kind == "leakage" for d in result.near_duplicates),
                         "outliers": len(result.outliers)})
    columns = ["run", "pictures", "flips", "found_in_top_n", "precision_at_n", "recall_all_suspects",
               "suspects", "near_duplicates", "outliers", "seconds"]
    print("  ".join(f"{c:>19}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>19}" for c in columns))
    print(json.dumps({"benchmark": "audit", "data": str(args.data), "flip": args.flip, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
