"""One process against several: ``transfer train --nproc-per-node N`` side by side on one machine.

    python benchmarks/bench_distributed.py [--data DIR] [--method finetune] [--epochs 2]
                                           [--processes 1,2] [--backbone efficientnet_lite0] [--device auto]

Each configuration is a whole ``transfer train DATA --json`` process in one shared
``TRANSFER_HOME``; a first, unmeasured one-epoch run fills the decoded-picture cache so that
every measured run starts from the same warm cache. Reported per number of processes: the
world size the run recorded, the mean epoch time (from the run's ``epoch`` events), pictures
per second, the best validation accuracy and the whole command's wall time.

On a CPU every rank is one process with its share of the cores (torchrun gives each rank
cores / ranks threads), so on a 2-core laptop two ranks compete for the same cores: the figures
show what DDP costs there, not a speed-up. On a machine with several GPUs the same command
shows the speed-up. Without ``--data`` (or when it is missing) the bundled demo data set is used.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")


def train(data: Path, home: Path, args, processes: int, epochs: int) -> dict:
    """One ``transfer train`` process; its JSON summary plus wall time and per-epoch figures."""
    command = [sys.executable, "-m", "transfer.cli", "train", str(data), "--method", args.method,
               "--backbone", args.backbone, "--epochs", str(epochs), "--runs-dir", str(home / "runs"), "--json",
               "--device", args.device]
    if processes > 1:
        command += ["--nproc-per-node", str(processes)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "TRANSFER_HOME": str(home)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"transfer train with {processes} processes failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = json.loads(lines[-1])
    run_dir = Path(summary["run_dir"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    epoch_events = [e for e in events if e.get("type") == "epoch"]
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "processes": processes,
        "world_size": summary.get("world_size", config.get("world_size", 1)),
        "state": summary["state"],
        "best_val_accuracy": summary.get("best_val_accuracy"),
        "epoch_seconds": [e["seconds"] for e in epoch_events],
        "images_per_s": [e["images_per_s"] for e in epoch_events],
        "wall_seconds": round(wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--method", default="finetune", choices=["finetune", "scratch", "features"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", default="1,2", help="comma-separated numbers of processes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (one GPU per process)")
    args = parser.parse_args()
    data = args.data
    if not data.is_dir():
        sys.path.insert(0, str(ROOT))
        from transfer.data.dataset import demo_dataset_path

        data = demo_dataset_path()
        print(f"{args.data} not found; using the demo data set {data}", file=sys.stderr)

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        home = Path(scratch)
        train(data, home, args, 1, 1)  # fills the decoded-picture (and probe feature) caches
        for processes in [int(p) for p in args.processes.split(",") if p]:
            result = train(data, home, args, processes, args.epochs)
            results.append(result)
            print(f"{processes} process(es): {result['state']}, epochs {result['epoch_seconds']} s",
                  file=sys.stderr, flush=True)

    base = next((r for r in results if r["processes"] == 1), None)
    print(f"{'processes':>9} {'world':>5} {'epoch_s':>8} {'pict/s':>7} {'vs 1':>5} {'best_acc':>8} {'wall_s':>7}")
    for result in results:
        epoch = statistics.mean(result["epoch_seconds"]) if result["epoch_seconds"] else None
        rate = statistics.mean(result["images_per_s"]) if result["images_per_s"] else None
        result["mean_epoch_seconds"] = None if epoch is None else round(epoch, 2)
        base_epoch = base and base.get("mean_epoch_seconds")
        result["epoch_vs_one_process"] = round(epoch / base_epoch, 3) if epoch and base_epoch else None
        print(f"{result['processes']:>9} {result['world_size']:>5} {_show(epoch):>8} {_show(rate, 0):>7} "
              f"{_show(result['epoch_vs_one_process']):>5} {_show(result['best_val_accuracy'], 3):>8} "
              f"{result['wall_seconds']:>7.1f}")
    print(json.dumps({"benchmark": "distributed", "data": str(data), "method": args.method, "backbone": args.backbone,
                      "epochs": args.epochs, "cpu_count": os.cpu_count(), "load_average_before": load_before,
                      "load_average_after": os.getloadavg(), "results": results}))
    return 0 if all(r["state"] == "finished" for r in results) else 1


def _show(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
