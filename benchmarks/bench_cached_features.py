"""Frozen-backbone epochs: re-running the backbone every epoch against cached features.

    python benchmarks/bench_cached_features.py [--data DIR] [--epochs 10] [--peer-batch-size 4]

Naive: the PyTorch tutorial's fixed feature extractor (``tutorial_peer.py``): every epoch
decodes every picture and runs the frozen backbone on it again. Cached: ``transfer.training.run`` with
the ``features`` method and the same backbone (EfficientNet-Lite0), in this process, timed
from ``train_run`` start to end: once with empty caches (the features are computed once, in
the first epoch's place) and once more with the caches the first run filled. Target (issue
4): cached at least 8x faster over 10 epochs. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")


def cached_runs(data: Path, epochs: int, backbone: str) -> list[dict]:
    from transfer.training.config import TrainConfig
    from transfer.data.dataset import load_dataset
    from transfer.core.runs import RunDir
    from transfer.training.run import train_run

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cached-") as home:
        os.environ["TRANSFER_HOME"] = home
        dataset = load_dataset(data).to_dict()
        for label in ("cold cache", "warm cache"):
            config = TrainConfig.for_method("features", dataset=dataset, backbone=backbone, epochs=epochs)
            run = RunDir.create(Path(home) / "runs", config.to_dict())
            started = time.perf_counter()
            train_run(run)
            seconds = time.perf_counter() - started
            events = run.events()
            feature_info = next(e for e in events if "feature_seconds" in e)
            epoch_seconds = [e["seconds"] for e in events if e["type"] == "epoch"]
            results.append({"label": label, "seconds": round(seconds, 3),
                            "feature_seconds": feature_info["feature_seconds"],
                            "features_computed": feature_info["features_computed"],
                            "mean_epoch_seconds": round(sum(epoch_seconds) / len(epoch_seconds), 4),
                            "best_val_accuracy": run.status()["best_val_accuracy"]})
            print(f"cached ({label}): {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--peer-epochs", type=int, help="naive epochs actually run (default --epochs); the total "
                                                        "is extrapolated to --epochs from their mean")
    parser.add_argument("--peer-batch-size", type=int, default=4, help="4 as in the tutorial")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} not found", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    ours = cached_runs(args.data, args.epochs, args.backbone)

    from tutorial_peer import train_peer

    peer_epochs = args.peer_epochs or args.epochs
    peer = train_peer(args.data, args.backbone, fixed_features=True, epochs=peer_epochs,
                      batch_size=args.peer_batch_size, log=lambda text: print(text, file=sys.stderr, flush=True))
    naive_total = peer.mean_epoch_seconds * args.epochs

    print(f"{'path':<36} {'total s':>9} {'s/epoch':>9} {'best acc':>9} {'speed-up':>9}")
    print(f"{'naive (backbone every epoch)':<36} {naive_total:>9.1f} {peer.mean_epoch_seconds:>9.2f} "
          f"{peer.best_val_accuracy:>9.3f} {1.0:>9.1f}")
    for result in ours:
        speedup = naive_total / result["seconds"]
        result["speedup"] = round(speedup, 1)
        print(f"{'cached, ' + result['label']:<36} {result['seconds']:>9.1f} {result['mean_epoch_seconds']:>9.3f} "
              f"{result['best_val_accuracy']:>9.3f} {speedup:>9.1f}")
    cold = ours[0]["speedup"]
    print(json.dumps({"benchmark": "cached_features", "epochs": args.epochs, "backbone": args.backbone,
                      "cpu_count": os.cpu_count(), "load_average_before": load_before,
                      "load_average_after": os.getloadavg(),
                      "naive": {**peer.to_dict(), "epochs_run": peer_epochs, "total_seconds_for_epochs": round(naive_total, 2)},
                      "cached": ours, "speedup_cold": cold, "speedup_warm": ours[1]["speedup"],
                      "target": ">= 8x over 10 epochs", "met": cold >= 8}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
