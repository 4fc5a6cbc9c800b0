""""None of these" on real photos: how many unrelated pictures are called unknown, and how many
real class pictures are wrongly called unknown.

    python benchmarks/bench_novelty.py [--backbone efficientnet_lite0] [--epochs 5] [--ants-bees DIR]

* far case: a model trained on the ants/bees photos of the PyTorch tutorial
  (``shared/datasets/hymenoptera_data``), shown the studio's demo photos (buildings, computers,
  flowers, vehicles: ``transfer/data/demo_data``);
* near case: a model trained on three of the four demo-photo classes, shown the fourth (each
  class held out in turn; the figures are summed over the four runs).

"Wrongly unknown" is measured on each model's validation pictures (real pictures of its classes
it never trained on). Beside each strictness, the two scores compared on equal terms, each with
its threshold set to keep exactly that share of the validation pictures: the novelty, and the
baseline the issue compares with (unknown when the top probability is below the threshold). Runs the feature-transfer method (the features are cached, so the four
near-case runs compute each photo's features once). Prints a table, then one JSON line.
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

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera_data"
DEMO_PHOTOS = ROOT / "transfer" / "data" / "demo_data"


def train(dataset: Path, runs: Path, backbone: str, epochs: int):
    from transfer.training.config import TrainConfig
    from transfer.core.runs import RunDir
    from transfer.training.run import train_run

    config = TrainConfig.for_method("features", dataset=str(dataset), backbone=backbone, epochs=epochs, device="cpu")
    run = RunDir.create(runs, config.to_dict())
    train_run(run)
    return run


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())


def outcome(run, strangers: list[Path]) -> dict:
    """Novelty and top probability of the strangers and of the run's validation pictures."""
    from transfer.models.novelty import validation_novelty
    from transfer.serving.predict import Predictor

    predictor = Predictor.from_run(run.path)
    answers = predictor.predict(strangers, 1, batch_size=16)
    saved = json.loads((run.path / "val_predictions.json").read_text())["predictions"]
    return {"thresholds": predictor.novelty.thresholds,
            "stranger_novelty": [a.novelty for a in answers], "stranger_top": [a.probability for a in answers],
            "val_novelty": validation_novelty(run.path), "val_top": [max(p["probabilities"]) for p in saved]}


def rates(results: list[dict]) -> dict:
    """Per strictness: strangers called unknown, validation pictures wrongly called unknown, and
    the top-probability baseline at the same kept share of validation pictures."""
    from transfer.models.novelty import STRICTNESS

    table = {}
    for name, keep in STRICTNESS.items():
        caught = wrong = baseline = same_share = strangers = val = 0
        for r in results:
            threshold = r["thresholds"][name]
            caught += sum(n > threshold for n in r["stranger_novelty"])
            wrong += sum(n > threshold for n in r["val_novelty"])
            floor = float(np.quantile(r["val_top"], 1 - keep))  # keeps `keep` of the validation pictures
            baseline += sum(p < floor for p in r["stranger_top"])
            ceiling = float(np.quantile(r["val_novelty"], keep))  # the novelty keeping the same share
            same_share += sum(n > ceiling for n in r["stranger_novelty"])
            strangers += len(r["stranger_novelty"])
            val += len(r["val_novelty"])
        table[name] = {"strangers_unknown": caught / strangers, "val_wrongly_unknown": wrong / val,
                       "top_probability_baseline_unknown": baseline / strangers,
                       "novelty_at_validation_share_unknown": same_share / strangers, "strangers": strangers,
                       "val_pictures": val}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ants-bees", type=Path, default=HYMENOPTERA,
                        help=f"the ants/bees photos (train/ and val/; default {HYMENOPTERA})")
    args = parser.parse_args()
    if not args.ants_bees.is_dir():
        print(f"{args.ants_bees} is not on this machine: the far case needs the ants/bees photos (--ants-bees DIR).")
        return 1
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-novelty-") as scratch:
        scratch = Path(scratch)
        os.environ.setdefault("TRANSFER_HOME", str(scratch / "home"))
        far = [outcome(train(args.ants_bees, scratch / "runs", args.backbone, args.epochs), photos(DEMO_PHOTOS))]
        near = []
        classes = sorted(p.name for p in DEMO_PHOTOS.iterdir() if p.is_dir())
        for held_out in classes:
            data = scratch / f"without-{held_out}"
            for name in classes:
                if name != held_out:
                    shutil.copytree(DEMO_PHOTOS / name, data / name)
            near.append(outcome(train(data, scratch / "runs", args.backbone, args.epochs), photos(DEMO_PHOTOS / held_out)))
    summary = {"benchmark": "novelty", "backbone": args.backbone, "method": "features", "epochs": args.epochs,
               "far": rates(far), "near": rates(near), "seconds": round(time.perf_counter() - started, 1),
               "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2)}
    print(f"backbone {args.backbone}, feature transfer, {args.epochs} epochs; load average "
          f"{summary['loadavg_before']:.1f} / {summary['loadavg_after']:.1f}")
    print(f"{'':<18}{'run threshold (training pictures)':>41}{'threshold keeping that share of val.':>44}")
    print(f"{'case':<6}{'strictness':<12}{'strangers unknown':>19}{'real wrongly unknown':>22}"
          f"{'novelty: strangers':>22}{'top-prob.: strangers':>22}")
    for case in ("far", "near"):
        for name, row in summary[case].items():
            print(f"{case:<6}{name:<12}{row['strangers_unknown']:>19.1%}{row['val_wrongly_unknown']:>22.1%}"
                  f"{row['novelty_at_validation_share_unknown']:>22.1%}{row['top_probability_baseline_unknown']:>22.1%}")
    print(f"far: ants/bees model, {summary['far']['normal']['strangers']} demo photos, "
          f"{summary['far']['normal']['val_pictures']} validation pictures; near: each demo class held out in turn, "
          f"{summary['near']['normal']['strangers']} held-out photos, {summary['near']['normal']['val_pictures']} "
          "validation pictures")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
