"""Which pictures to label first: the studio's suggestions against random picks, and their speed.

    python benchmarks/bench_suggest.py [--seeds 10] [--skip-timing] [--uneven-only]

Accuracy: on real photos (the ants/bees set: its train/ folder is the pool, its val/ folder the
test) and on the demo data set (4 classes, split 80/20), every seed starts from 1 labelled
picture per class drawn at random, then labels 1 or 2 more per class picked by

- ``random``: drawn at random from the pool,
- ``least certain``: the smallest margin of a head trained on the labels so far,
- ``suggested``: ``transfer.analysis.suggest.order_pool`` (what `transfer suggest` returns),

fits the features method's linear head (``fit_head_on_features``, EfficientNet-Lite0 features,
guided by Lite0's ImageNet classifier as in a features run)
and measures accuracy on the test pictures; the table gives the mean over the seeds. "Cold
start" counts the classes covered by C picks with no label at all.

Uneven starts: 5 labelled pictures of one class (each class in turn) and 1 of every other, then
2 more per class picked at random, in the order `transfer suggest` gives by default (typical,
then hesitant), and in that order evened by the model's guess (`--even-out`). The
table gives accuracy, balanced accuracy (the mean of the recalls per class, which an uneven
training set hurts first) and the labelled pictures of the largest class over the smallest's
after labelling.

Timing: `transfer suggest POOL --count 20 --json` as a command (imports included) on a pool of
1,000 photos (the ants/bees pictures, mirrored and cropped into distinct files) with an empty
feature cache (cold) and again (cached). Memory: peak resident memory of the ordering for
1,000 to 20,000 feature vectors, each in a fresh process. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = Path("/work/shared/datasets/hymenoptera_data")
POOL_SIZE = 1000


# --------------------------------------------------------------------------- accuracy


def features_of(dataset) -> tuple[np.ndarray, np.ndarray, list]:
    from transfer.analysis.audit import picture_features

    samples = list(dataset.samples)
    labels = np.array([dataset.label_index(s.label) for s in samples])
    return picture_features(samples, "efficientnet_lite0").features, labels, samples


def head_accuracy(train_x, train_y, test_x, test_y, classes: int, seed: int) -> tuple[float, np.ndarray]:
    import torch

    from transfer.models.backbones import pretrained_classifier
    from transfer.models.heads import make_head
    from transfer.training.run import fit_head_on_features

    torch.manual_seed(seed)
    head = make_head(train_x.shape[1], classes)
    fit_head_on_features(head, torch.from_numpy(train_x), torch.from_numpy(train_y), seed=seed,
                         source=pretrained_classifier("efficientnet_lite0"))
    with torch.no_grad():
        test_p = torch.softmax(head(torch.from_numpy(test_x)), 1).numpy()
    return float((test_p.argmax(1) == test_y).mean()), head


def margins(head, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        p = torch.softmax(head(torch.from_numpy(x)), 1).numpy()
    top = -np.sort(-p, axis=1)
    return top[:, 0] - top[:, 1]


def pick(method: str, pool_x, reduced, labelled: list[int], count: int, head, rng) -> list[int]:
    from transfer.analysis.suggest import order_pool

    free = np.setdiff1d(np.arange(len(pool_x)), labelled)
    if method == "random":
        return rng.choice(free, count, replace=False).tolist()
    if method == "least certain":
        return free[np.argsort(margins(head, pool_x[free]))[:count]].tolist()
    picks = order_pool(reduced[free], reduced[labelled], count, labelled_per_class=1.0, seed=int(rng.integers(1 << 30)))
    return free[[p.index for p in picks]].tolist()


def accuracy_study(name, pool_x, pool_y, test_x, test_y, seeds: int) -> list[dict]:
    from transfer.analysis.suggest import reduce_features

    classes = int(pool_y.max()) + 1
    reduced = reduce_features(pool_x)
    rows = []
    for extra in (1, 2):
        scores: dict[str, list[float]] = {"random": [], "least certain": [], "suggested": []}
        start_scores = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            start = [int(rng.choice(np.flatnonzero(pool_y == c))) for c in range(classes)]
            base, head = head_accuracy(pool_x[start], pool_y[start], test_x, test_y, classes, seed)
            start_scores.append(base)
            for method in scores:
                chosen = start + pick(method, pool_x, reduced, start, extra * classes, head,
                                      np.random.default_rng(1000 + seed))
                scores[method].append(head_accuracy(pool_x[chosen], pool_y[chosen], test_x, test_y, classes, seed)[0])
        row = {"data": name, "labels per class": f"1 + {extra}", "start (1 per class)": round(np.mean(start_scores), 4)}
        row.update({m: round(float(np.mean(v)), 4) for m, v in scores.items()})
        row["gain over random"] = round(row["suggested"] - row["random"], 4)
        rows.append(row)
    return rows


def probabilities_of(head, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(head(torch.from_numpy(x)), 1).numpy()


def balanced_accuracy(head, x: np.ndarray, y: np.ndarray) -> float:
    predicted = probabilities_of(head, x).argmax(1)
    return float(np.mean([(predicted[y == c] == c).mean() for c in np.unique(y)]))


UNEVEN_METHODS = ("random", "suggested", "suggested, evened (--even-out)")


def uneven_pick(method: str, pool_x, pool_y, reduced, labelled: list[int], count: int, head, rng) -> list[int]:
    """``count`` more pictures to label after an uneven start, by ``method`` (one of ``UNEVEN_METHODS``)."""
    from transfer.analysis.suggest import BALANCE_CANDIDATES, favour_fewest_labelled, label_counts, order_pool
    from transfer.data.samples import Sample

    free = np.setdiff1d(np.arange(len(pool_x)), labelled)
    if method == "random":
        return rng.choice(free, count, replace=False).tolist()
    classes = [str(c) for c in range(int(pool_y.max()) + 1)]
    counts = label_counts([Sample(None, str(pool_y[i]), "train", str(i)) for i in labelled], classes)
    probabilities = probabilities_of(head, pool_x[free])
    seed = int(rng.integers(1 << 30))
    if method == "suggested":
        picks = order_pool(reduced[free], reduced[labelled], count, probabilities=probabilities,
                           labelled_per_class=min(counts), seed=seed)
    else:
        picks = order_pool(reduced[free], reduced[labelled], count * BALANCE_CANDIDATES, probabilities=probabilities,
                           labelled_per_class=min(counts), seed=seed)
        picks = favour_fewest_labelled(picks, probabilities.argmax(1), counts, count)
    return free[[p.index for p in picks]].tolist()


def uneven_study(name, pool_x, pool_y, test_x, test_y, seeds: int, first: int = 5) -> list[dict]:
    """Uneven starts: ``first`` labelled pictures of one class, 1 of each other; then 2 more per class."""
    from transfer.analysis.suggest import reduce_features

    classes = int(pool_y.max()) + 1
    reduced = reduce_features(pool_x)
    methods = UNEVEN_METHODS
    found: dict[str, dict[str, list[float]]] = {m: {"accuracy": [], "balanced": [], "largest/smallest": []} for m in methods}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        big = seed % classes  # each class is the large one in turn
        start = [int(i) for c in range(classes)
                 for i in rng.choice(np.flatnonzero(pool_y == c), first if c == big else 1, replace=False)]
        _, head = head_accuracy(pool_x[start], pool_y[start], test_x, test_y, classes, seed)
        for method in methods:
            chosen = start + uneven_pick(method, pool_x, pool_y, reduced, start, 2 * classes, head,
                                         np.random.default_rng(1000 + seed))
            accuracy, after = head_accuracy(pool_x[chosen], pool_y[chosen], test_x, test_y, classes, seed)
            counts = np.bincount(pool_y[chosen], minlength=classes)
            found[method]["accuracy"].append(accuracy)
            found[method]["balanced"].append(balanced_accuracy(after, test_x, test_y))
            found[method]["largest/smallest"].append(counts.max() / max(1, counts.min()))
    rows = []
    for method in methods:
        rows.append({"data": name, "start": f"{first} + 1 x {classes - 1}, then +{2 * classes}", "method": method,
                     "accuracy": round(float(np.mean(found[method]["accuracy"])), 4),
                     "balanced accuracy": round(float(np.mean(found[method]["balanced"])), 4),
                     "labels largest/smallest after": round(float(np.mean(found[method]["largest/smallest"])), 2)})
    return rows


def cold_coverage(name, pool_x, pool_y, seeds: int) -> dict:
    from transfer.analysis.suggest import order_pool, reduce_features

    classes = int(pool_y.max()) + 1
    reduced = reduce_features(pool_x)
    typical, random_ = [], []
    for seed in range(seeds):
        picks = order_pool(reduced, reduced[:0], classes, seed=seed)
        typical.append(len(set(pool_y[[p.index for p in picks]])))
        random_.append(len(set(pool_y[np.random.default_rng(seed).choice(len(pool_y), classes, replace=False)])))
    return {"data": name, "picks": classes, "classes covered, suggested": round(float(np.mean(typical)), 2),
            "classes covered, random": round(float(np.mean(random_)), 2)}


def datasets():
    from transfer.data.dataset import demo_dataset_path, load_dataset
    from transfer.data.samples import TRAIN

    found = []
    if HYMENOPTERA.is_dir():
        found.append(("ants/bees", load_dataset(HYMENOPTERA)))
    found.append(("demo data", load_dataset(demo_dataset_path(), val_fraction=0.2)))
    for name, dataset in found:
        x, y, samples = features_of(dataset)
        train = np.array([s.split == TRAIN for s in samples])
        yield name, x[train], y[train], x[~train], y[~train]


# --------------------------------------------------------------------------- speed and memory


def photo_pool(target: Path) -> Path:
    """1,000 distinct photos: the ants/bees pictures as they are, mirrored and cropped."""
    from PIL import ImageOps

    from transfer.data.images import open_image

    sources = sorted(HYMENOPTERA.rglob("*.jpg"))
    target.mkdir(parents=True)
    made = 0
    for variant in range(3):
        for path in sources:
            if made >= POOL_SIZE:
                return target
            image = open_image(path)
            image.thumbnail((320, 320))
            if variant == 1:
                image = ImageOps.mirror(image)
            elif variant == 2:
                w, h = image.size
                image = image.crop((w // 10, h // 10, w - w // 10, h - h // 10))
            image.save(target / f"{variant}-{path.stem}.jpg", quality=90)
            made += 1
    return target


def timed_command(pool: Path, home: Path) -> tuple[float, dict]:
    env = {**os.environ, "TRANSFER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "transfer.cli", "suggest", str(pool), "--count", "20", "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, json.loads(out.strip().splitlines()[-1])


MEMORY_PROBE = """
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
from transfer.analysis.suggest import order_pool, reduce_features
n = int(sys.argv[1])
rng = np.random.default_rng(0)
centres = rng.normal(size=(40, 1280)).astype(np.float32)
x = (np.abs(centres[rng.integers(0, 40, n)] + rng.normal(size=(n, 1280)).astype(np.float32)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reduced = reduce_features(x)
order_pool(reduced[:-100], reduced[-100:], 20)
print(before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def memory_rows() -> list[dict]:
    rows = []
    for n in (1000, 5000, 20000):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE.format(root=str(ROOT)), str(n)],
                             capture_output=True, text=True, check=True).stdout.split()
        rows.append({"pictures": n, "features MB": round(n * 1280 * 4 / 1e6, 1),
                     "peak MB before ordering": round(float(out[0])), "peak MB after": round(float(out[1])),
                     "ordering s": round(time.perf_counter() - started, 2)})
    return rows


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--uneven-only", action="store_true", help="only the uneven starts (and the evened order)")
    args = parser.parse_args()
    summary: dict = {"seeds": args.seeds, "load_average": os.getloadavg()}
    accuracy, coverage, uneven = [], [], []
    for name, pool_x, pool_y, test_x, test_y in datasets():
        uneven += uneven_study(name, pool_x, pool_y, test_x, test_y, args.seeds)
        if not args.uneven_only:
            accuracy += accuracy_study(name, pool_x, pool_y, test_x, test_y, args.seeds)
            coverage.append(cold_coverage(name, pool_x, pool_y, args.seeds))
    print_table(uneven)
    summary["uneven"] = uneven
    if not args.uneven_only:
        print_table(accuracy)
        print_table(coverage)
        summary["accuracy"], summary["cold_start"] = accuracy, coverage
    if not args.skip_timing and not args.uneven_only and HYMENOPTERA.is_dir():
        with tempfile.TemporaryDirectory() as scratch:
            pool = photo_pool(Path(scratch) / "pool")
            cold, result = timed_command(pool, Path(scratch) / "home")
            cached, again = timed_command(pool, Path(scratch) / "home")
        timing = [{"pool": result["pictures"], "cold s (command)": round(cold, 2),
                   "cold s (in suggest)": result["seconds"], "cached s (command)": round(cached, 2),
                   "cached s (in suggest)": again["seconds"]}]
        print_table(timing)
        memory = memory_rows()
        print_table(memory)
        summary["timing"], summary["memory"] = timing, memory
    summary["load_average_after"] = os.getloadavg()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
