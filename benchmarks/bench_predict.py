"""Prediction and Grad-CAM latency of a loaded run, one picture at a time (what the Predict page does).

    python benchmarks/bench_predict.py [--run RUN_DIR] [--image FILE] [--calls 50]

Without ``--run`` a run folder is made in a temporary directory from the bundled
EfficientNet-Lite0 with a fresh 3-class head (latency does not depend on the head's values).
Without ``--image`` a photo from the hymenoptera data set is used when this machine has it,
else a generated 640 x 480 JPEG. The model is loaded once, as the web app does, then timed:

* predict from a decoded PIL image: preprocessing (resize, crop, normalise) + forward + top-k;
* predict from the file: the same plus reading and decoding the JPEG;
* the same from a PIL image with the model in the default (contiguous) memory layout, to show
  what channels-last is worth;
* Grad-CAM from a decoded PIL image: preprocessing + forward + backward to the map + resize.

Targets on a 2-core CPU: prediction p50 <= 30 ms, Grad-CAM p50 <= 150 ms. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"
PREDICT_TARGET_MS = 30.0
GRADCAM_TARGET_MS = 150.0


def make_run(folder: Path, classes=("ants", "bees", "wasps")) -> Path:
    """A run folder in the trainer's format with the bundled EfficientNet-Lite0 and a new head."""
    import torch
    from safetensors.torch import save_file

    from transfer.backbones import get_backbone
    from transfer.methods import create_model
    from transfer.model_io import model_info

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", len(classes), "features")
    prep = get_backbone("efficientnet_lite0").preprocessing
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "method": "features"}))
    (folder / "labels.json").write_text(json.dumps({"classes": list(classes)}))
    (folder / "model.json").write_text(json.dumps(model_info(
        model, backbone="efficientnet_lite0", method="features", classes=list(classes), preprocessing=prep)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def pick_image(given: Path | None, scratch: Path) -> Path:
    if given is not None:
        return given
    photos = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg")) if HYMENOPTERA.is_dir() else []
    if photos:
        return photos[0]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    path = scratch / "generated.jpg"
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def timed(call, calls: int, warm_up: int = 3) -> list[float]:
    for _ in range(warm_up):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (default: a fresh one with efficientnet_lite0)")
    parser.add_argument("--image", type=Path, help="the picture to predict (default: a hymenoptera photo)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per measurement (default 50)")
    parser.add_argument("--cam-calls", type=int, default=20, help="timed Grad-CAM calls (default 20)")
    args = parser.parse_args()

    import torch

    from transfer.images import open_image
    from transfer.predict import Predictor, load_run_model

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        os.environ.setdefault("TRANSFER_HOME", scratch)
        run = args.run or make_run(Path(scratch) / "run")
        image_path = pick_image(args.image, Path(scratch))

        started = time.perf_counter()
        predictor = Predictor.from_run(run)
        load_seconds = time.perf_counter() - started
        loaded = load_run_model(run)
        contiguous = Predictor(loaded.model, loaded.labels, loaded.preprocessing, channels_last=False)

        picture = open_image(image_path)
        rows = [
            ("predict, decoded PIL image", timed(lambda: predictor.predict(picture, top_k=5), args.calls)),
            ("predict, from the JPEG file", timed(lambda: predictor.predict(image_path, top_k=5), args.calls)),
            ("predict, PIL, contiguous layout", timed(lambda: contiguous.predict(picture, top_k=5), args.calls)),
            ("Grad-CAM, decoded PIL image", timed(lambda: predictor.explain(picture), args.cam_calls)),
        ]
        layer = predictor.explain(picture).layer

    print(f"run: {run if args.run else 'fresh efficientnet_lite0, 3 classes'}  image: {image_path.name} "
          f"{picture.size[0]}x{picture.size[1]}  threads: {torch.get_num_threads()}  cpu cores: {os.cpu_count()}")
    load_after = os.getloadavg()[0]
    print(f"model load (once): {load_seconds:.2f} s;  Grad-CAM layer: {layer}")
    print(f"machine load average before/after: {load_before:.1f} / {load_after:.1f} "
          "(other processes on the same cores inflate the numbers)")
    print(f"{'measurement':<34}{'calls':>6}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}")
    for name, times in rows:
        print(f"{name:<34}{len(times):>6}{percentile(times, 0.5):>9.1f}{percentile(times, 0.9):>9.1f}"
              f"{statistics.fmean(times):>9.1f}")
    predict_p50 = percentile(rows[0][1], 0.5)
    cam_p50 = percentile(rows[3][1], 0.5)
    print(f"targets: predict p50 {predict_p50:.1f} ms <= {PREDICT_TARGET_MS:.0f} ms "
          f"{'met' if predict_p50 <= PREDICT_TARGET_MS else 'MISSED'}; Grad-CAM p50 {cam_p50:.1f} ms <= "
          f"{GRADCAM_TARGET_MS:.0f} ms {'met' if cam_p50 <= GRADCAM_TARGET_MS else 'MISSED'}")
    keys = ("predict_pil", "predict_file", "predict_pil_contiguous", "gradcam_pil")
    summary = {"benchmark": "predict", "backbone": loaded.backbone, "image": image_path.name,
               "image_size": list(picture.size), "threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
               "load_seconds": round(load_seconds, 3), "loadavg_before": round(load_before, 2),
               "loadavg_after": round(load_after, 2)}
    for key, (_, times) in zip(keys, rows):
        summary[f"{key}_p50_ms"] = round(percentile(times, 0.5), 2)
        summary[f"{key}_p90_ms"] = round(percentile(times, 0.9), 2)
    summary["predict_target_met"] = predict_p50 <= PREDICT_TARGET_MS
    summary["gradcam_target_met"] = cam_p50 <= GRADCAM_TARGET_MS
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
