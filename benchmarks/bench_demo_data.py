"""The newcomer's first run: the demo data set trained with the defaults, as "Compare" does.

    python benchmarks/bench_demo_data.py [--methods features,finetune,scratch] [--image-size N]

Each method is trained with ``TrainConfig.for_method(method, dataset=<demo>, backbone=<default>,
seed=0, image_size=...)`` - what ``transfer train <demo>`` and the Train page's "Compare the
three methods" button send (the page passes the image size saved on the Configure page, the
backbone's own by default) - one after another, in this process, with empty caches. Targets
(issue 13): feature transfer reaches at least 0.9 best validation accuracy, and the three
together take under 5 minutes on a 2-core CPU. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def train_demo(method: str, image_size: int | None, runs: Path) -> dict:
    from transfer.training.config import DEFAULT_BACKBONE, TrainConfig
    from transfer.data.dataset import demo_dataset_path, load_dataset
    from transfer.core.runs import RunDir
    from transfer.training.run import train_run

    dataset = load_dataset(demo_dataset_path()).to_dict()
    config = TrainConfig.for_method(method, dataset=dataset, backbone=DEFAULT_BACKBONE, seed=0,
                                    image_size=image_size)
    run = RunDir.create(runs, config.to_dict())
    started = time.perf_counter()
    train_run(run)
    seconds = time.perf_counter() - started
    status = run.status()
    return {"method": method, "epochs": config.epochs, "image_size": config.image_size or "backbone's",
            "val_accuracy": status.get("val_accuracy"), "best_val_accuracy": status.get("best_val_accuracy"),
            "seconds": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="features,finetune,scratch")
    parser.add_argument("--image-size", type=int, default=None,
                        help="as saved by the Configure page (default: none, the method's or backbone's own)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as home:
        os.environ["TRANSFER_HOME"] = home
        for method in args.methods.split(","):
            rows.append(train_demo(method.strip(), args.image_size, Path(home) / "runs"))
            print(f"{method}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
    columns = ["method", "epochs", "image_size", "val_accuracy", "best_val_accuracy", "seconds"]
    print("  ".join(f"{c:>17}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>17}" for c in columns))
    total = round(sum(row["seconds"] for row in rows), 1)
    print(f"{'all':>17}  {'':>17}  {'':>17}  {'':>17}  {'':>17}  {total!s:>17}")
    print(json.dumps({"benchmark": "demo", "runs": rows, "total_seconds": total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
