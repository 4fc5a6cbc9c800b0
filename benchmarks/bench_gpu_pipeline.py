"""What the input pipeline costs on a GPU: ResNet-50 fine-tuning steps fed from the GPU-resident
uint8 picture cache with GPU augmentation, against the same steps fed a ready-made tensor.

    python benchmarks/bench_gpu_pipeline.py [--images 640] [--batch-size 128] [--steps 30]

Generated pictures (no data set or network needed) go through the real engine: checked,
decoded once, stacked as uint8 on the GPU by ``Trainer.prepare`` (method ``scratch``, so
ResNet-50 needs no downloaded weights; the step costs the same as fine-tuning all layers).
Then ``transfer.training.steps.train_step`` is timed twice: as the engine runs it (index the uint8 cache,
random resized crop + flip + normalise on the GPU, channels-last, autocast forward, backward,
AdamW step) and with ``forward_train`` replaced by the same model on a fixed, already
normalised channels-last tensor of the same shape. The difference is the input pipeline's
share (target: at most 15 %). Prints a table, then one JSON line (also written to
``$OUT/gpu_pipeline.json`` when ``OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_pictures(root: Path, count: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        label = f"class{index % classes}"
        (root / label).mkdir(parents=True, exist_ok=True)
        base = np.array([60 * (index % classes), 120, 200 - 40 * (index % classes)], dtype=np.int16)
        pixels = base + rng.integers(-40, 41, size=(240, 320, 3), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / label / f"{index:05d}.jpg", quality=90)
    return root


def sync() -> None:
    if torch.cuda.is_available():
        sync()


def time_steps(trainer, steps: int, warmup: int, batch_size: int) -> float:
    from transfer.training.steps import train_step

    n = len(trainer.data.train_samples)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randperm(n, generator=generator)[:batch_size] for _ in range(steps + warmup)]
    for indices in batches[:warmup]:
        train_step(trainer.parts, indices, 1)
    sync()
    started = time.perf_counter()
    for indices in batches[warmup:]:
        train_step(trainer.parts, indices, 1)
    sync()
    return (time.perf_counter() - started) / steps


def time_augmentation(trainer, steps: int, batch_size: int) -> float:
    from transfer.data.augment import augment_batch

    task = trainer.task
    n = task.train_bank.shape[0]
    generator = torch.Generator().manual_seed(1)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        indices = torch.randperm(n, generator=generator)[:batch_size].to(task.train_bank.device)
        augment_batch(task.train_bank[indices], task.prep, task.spec, generator=generator) \
            .contiguous(memory_format=torch.channels_last)
    sync()
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script on a machine without a GPU")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2

    from transfer.training.config import TrainConfig
    from transfer.core.runs import RunDir
    from transfer.training.run import Trainer

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        scratch = Path(scratch)
        os.environ["TRANSFER_HOME"] = str(scratch / "home")
        started = time.perf_counter()
        data = write_pictures(scratch / "data", args.images)
        config = TrainConfig.for_method("scratch", dataset=str(data), backbone=args.backbone,
                                        image_size=args.image_size, batch_size=args.batch_size, epochs=1,
                                        augmentation="light", device=args.device)
        trainer = Trainer(RunDir.create(scratch / "runs", config.to_dict()), config)
        trainer.prepare()
        prepare_seconds = time.perf_counter() - started
        trainer.task.train_mode(1)
        batch = min(args.batch_size, len(trainer.data.train_samples))

        engine = time_steps(trainer, args.steps, args.warmup, batch)
        augmentation = time_augmentation(trainer, args.steps, batch)

        task = trainer.task
        fixed = torch.randn(batch, 3, args.image_size, args.image_size, device=args.device) \
            .contiguous(memory_format=torch.channels_last)

        def synthetic_forward(indices, epoch, generator):
            with trainer.setup.autocast():
                return task.module(fixed)

        task.forward_train = synthetic_forward
        synthetic = time_steps(trainer, args.steps, args.warmup, batch)

    share = max(0.0, (engine - synthetic) / engine)
    rows = [("engine: uint8 cache on GPU + GPU augmentation", engine),
            ("synthetic: ready tensor on GPU", synthetic),
            ("augmentation alone (index + crop/flip/normalise)", augmentation)]
    print(f"{'feeding':<52} {'ms/step':>9} {'images/s':>10}")
    for name, seconds in rows:
        print(f"{name:<52} {seconds * 1000:>9.1f} {batch / seconds:>10.0f}")
    print(f"input pipeline share: {share * 100:.1f} % (target <= 15 %)")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    result = {"benchmark": "gpu_pipeline", "device": device, "torch": torch.__version__,
              "backbone": args.backbone, "batch_size": batch, "image_size": args.image_size,
              "precision": trainer.setup.precision, "train_pictures": len(trainer.data.train_samples),
              "bank_device": str(task.train_bank.device), "bank_dtype": str(task.train_bank.dtype),
              "prepare_seconds": round(prepare_seconds, 2),
              "engine_ms_per_step": round(engine * 1000, 2), "synthetic_ms_per_step": round(synthetic * 1000, 2),
              "augmentation_ms_per_step": round(augmentation * 1000, 2),
              "engine_images_per_s": round(batch / engine, 1), "synthetic_images_per_s": round(batch / synthetic, 1),
              "input_pipeline_share": round(share, 4), "target": "<= 0.15", "met": share <= 0.15}
    print(json.dumps(result))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_pipeline.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
