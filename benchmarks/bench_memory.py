"""Peak memory of a training worker on 1,000 pictures.

    python benchmarks/bench_memory.py [--images 1000] [--methods features,finetune] [--epochs 1]
                                      [--source DIR]

Writes ``--images`` distinct JPEG pictures (the hymenoptera pictures, each cropped, shifted
in colour and resized differently, seeded by its number, so no two share a hash; random
noise pictures when the source is missing) as a folder of two class folders, then runs a real worker process
(``python -m transfer.runtime.worker RUN_DIR``) per method with empty caches and reads its peak
resident memory from the kernel (``wait4``'s ``ru_maxrss``). Target (issue 4): at most 2.5 GB.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/work/shared/datasets/hymenoptera_data")
TARGET_BYTES = 2.5e9


def make_pictures(target: Path, count: int, source: Path, processes: int = 1) -> Path:
    originals = sorted(source.rglob("*.jpg")) if source.is_dir() else []
    chunks = [range(start, count, processes) for start in range(processes)]
    if processes == 1:
        _write_pictures(target, chunks[0], originals)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_pictures, [target] * processes, chunks, [originals] * processes))
    return target


def _write_pictures(target: Path, indices: range, originals: list[Path]) -> None:
    for index in indices:
        rng = np.random.default_rng(index)
        label = "a" if index % 2 == 0 else "b"
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        if originals:
            image = Image.fromarray(_original(originals[index % len(originals)]))
            width, height = image.size
            left, top = rng.integers(0, max(1, width // 8)), rng.integers(0, max(1, height // 8))
            image = image.crop((left, top, width - rng.integers(0, max(1, width // 8)), height))
            pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=3)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            scale = rng.uniform(0.8, 1.3)
            image = image.resize((max(64, int(image.width * scale)), max(64, int(image.height * scale))))
        else:
            image = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
        image.save(folder / f"{index:05d}.jpg", quality=90)


@functools.lru_cache(maxsize=None)
def _original(path: Path) -> np.ndarray:
    """Each source photo is decoded once per process, not once per picture made from it."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def peak_rss_of_worker(run_dir: Path, env: dict) -> tuple[int, float, int]:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "transfer.runtime.worker", str(run_dir)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss * 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--methods", default="features,finetune")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args()

    from transfer.training.config import TrainConfig
    from transfer.data.dataset import load_dataset
    from transfer.core.runs import RunDir

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        scratch = Path(scratch)
        data = make_pictures(scratch / "data", args.images, args.source)
        dataset = load_dataset(data).to_dict()
        for method in [m for m in args.methods.split(",") if m]:
            home = scratch / f"home-{method}"
            env = {**os.environ, "TRANSFER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
            config = TrainConfig.for_method(method, dataset=dataset, backbone=args.backbone, epochs=args.epochs)
            run = RunDir.create(scratch / "runs", config.to_dict())
            peak, seconds, code = peak_rss_of_worker(run.path, env)
            status = run.status()
            results[method] = {"peak_rss_bytes": peak, "peak_rss_gb": round(peak / 1e9, 3), "seconds": round(seconds, 1),
                               "state": status["state"], "exit_code": code, "batch_size": config.batch_size,
                               "train_images": sum(1 for s in dataset["samples"] if s["split"] == "train"),
                               "met": peak <= TARGET_BYTES and status["state"] == "finished"}
            print(f"{method}: {peak / 1e9:.2f} GB peak, {seconds:.0f} s, {status['state']}", file=sys.stderr, flush=True)

    print(f"{'method':<10} {'images':>7} {'peak RSS GB':>12} {'seconds':>8} {'state':>9}")
    for method, result in results.items():
        print(f"{method:<10} {args.images:>7} {result['peak_rss_gb']:>12.2f} {result['seconds']:>8.0f} {result['state']:>9}")
    print(json.dumps({"benchmark": "memory", "images": args.images, "backbone": args.backbone, "epochs": args.epochs,
                      "results": results, "target": "<= 2.5 GB", "met": all(r["met"] for r in results.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
