"""One process against several: the same fine-tuning run trained in one process and by torchrun ranks.

    python benchmarks/bench_distributed.py [--data DIR] [--nproc 2] [--device cpu|cuda] [--epochs 2]

Both runs use the same config (the batch size is the global batch; the learning rate is the
same), each with its own empty TRANSFER_HOME, so both decode their pictures. The ranks run
``python -m torch.distributed.run --standalone --nproc-per-node N -m transfer.distributed
RUN_DIR``. Reported per run: the whole run's seconds, the mean epoch seconds after the first
epoch, training pictures per second and the best validation accuracy. On a CPU the ranks share
the cores (one thread per rank when there are as many ranks as cores), so expect no gain
there; the comparison that matters is one GPU against several. Prints a table, then one JSON
line (also written to ``$OUT/distributed.json`` when ``OUT`` is set).
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

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")


def summary(run, seconds: float, processes: int) -> dict:
    epochs = run.events("epoch")
    later = [e["seconds"] for e in epochs[1:]] or [e["seconds"] for e in epochs]
    return {"processes": processes, "state": run.status().get("state"), "seconds": round(seconds, 2),
            "epoch_seconds": round(sum(later) / len(later), 3) if later else None,
            "images_per_s": round(sum(e["images_per_s"] for e in epochs) / len(epochs), 1) if epochs else None,
            "best_val_accuracy": run.status().get("best_val_accuracy")}


def train_in_process(config: dict, scratch: Path) -> dict:
    from transfer.runs import RunDir
    from transfer.train import train_run

    os.environ["TRANSFER_HOME"] = str(scratch / "home-1")
    run = RunDir.create(scratch / "runs-1", config)
    started = time.perf_counter()
    train_run(run)
    return summary(run, time.perf_counter() - started, 1)


def train_on_ranks(config: dict, scratch: Path, nproc: int) -> dict:
    from transfer.runs import RunDir

    run = RunDir.create(scratch / f"runs-{nproc}", config)
    env = {**os.environ, "TRANSFER_HOME": str(scratch / f"home-{nproc}"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "transfer.distributed", str(run.path)]
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        print(finished.stdout[-2000:], finished.stderr[-4000:], file=sys.stderr)
    return summary(run, seconds, nproc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="finetune", choices=["finetune", "scratch", "features"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))

    from transfer.config import TrainConfig

    config = TrainConfig.for_method(args.method, dataset=str(args.data), device=args.device, epochs=args.epochs,
                                    batch_size=args.batch_size, image_size=args.image_size).to_dict()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        rows = [train_in_process(config, Path(scratch)), train_on_ranks(config, Path(scratch), args.nproc)]
    print(f"{'processes':>9} {'state':>9} {'run s':>8} {'epoch s':>8} {'img/s':>8} {'best acc':>8}")
    for row in rows:
        print(f"{row['processes']:>9} {row['state']:>9} {row['seconds']:>8} {row['epoch_seconds']!s:>8} "
              f"{row['images_per_s']!s:>8} {row['best_val_accuracy']!s:>8}")
    result = {"benchmark": "distributed", "method": args.method, "device": args.device, "data": str(args.data),
              "epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size, "runs": rows}
    line = json.dumps(result)
    print(line)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "distributed.json").write_text(line + "\n")
    return 0 if all(row["state"] == "finished" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
