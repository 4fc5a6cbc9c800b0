"""``transfer train`` against the official PyTorch transfer-learning tutorial, same machine, same run.

    python benchmarks/bench_tutorial.py [--data DIR] [--peer-epochs 25] [--skip-peer]
                                         [--ours features-lite0,features-lite2,finetune-lite2,finetune-lite0]
                                         [--finetune-epochs N] [--ours-args "--precision fp32 ..."]

Ours: the whole ``transfer train DATA --json`` process (command line, worker process, data
check, decoding, features, training), each configuration twice in a fresh ``TRANSFER_HOME``:
``cold`` (nothing cached) then ``warm`` (decoded pictures and features cached by the first).
Fine-tuning runs once (cold). The peer (``tutorial_peer.py``): the tutorial's fixed feature
extractor and fine-tuning, 25 epochs of batch 4, on the same bundled backbone; the full peer
takes about 6 + 13 minutes on two cores, ``--peer-epochs`` shortens it (its per-epoch time is
what the epoch comparison uses). Prints a table, then one JSON line.

Targets (issue 4): features/Lite0 best val acc >= 0.94 in <= 35 s (a tenth of the peer's
350 s); features/Lite2 >= 0.95 in the same time; finetune/Lite2 >= 0.95. Issue 12: a
finetune/Lite0 epoch <= 0.5x the peer's fine-tuning epoch, best val acc >= 0.94.

The machine is often shared: the JSON line carries the load average before and after, and
``--rounds N`` alternates ours and the peer N times so both see the same load (the epoch ratio
is then the median of the rounds' ratios). For the fine-tuning epoch alone:

    python benchmarks/bench_tutorial.py --ours finetune-lite0 --peer-variants finetune \
        --peer-epochs 1 --finetune-epochs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")
CONFIGS = {
    "features-lite0": ("features", "efficientnet_lite0"),
    "features-lite2": ("features", "efficientnet_lite2"),
    "finetune-lite2": ("finetune", "efficientnet_lite2"),
    "finetune-lite0": ("finetune", "efficientnet_lite0"),
}


def run_transfer_train(data: Path, method: str, backbone: str, home: Path, extra: list[str]) -> dict:
    """One whole ``transfer train`` process; returns its JSON line plus wall time and epoch times."""
    runs = home / "runs"
    command = [sys.executable, "-m", "transfer.cli", "train", str(data), "--method", method, "--backbone", backbone,
               "--runs-dir", str(runs), "--json", *extra]
    env = {**os.environ, "TRANSFER_HOME": str(home)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"transfer train failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["wall_seconds"] = round(wall, 2)
    events = [json.loads(line) for line in (Path(result["run_dir"]) / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e.get("type") == "epoch"]
    result["epoch_seconds"] = [e["seconds"] for e in epochs]
    result["features_seconds"] = next((e["feature_seconds"] for e in events if "feature_seconds" in e), None)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--peer-epochs", type=int, default=25, help="tutorial epochs (25 = the full tutorial)")
    parser.add_argument("--skip-peer", action="store_true", help="measure only transfer train")
    parser.add_argument("--peer-variants", default="features,finetune")
    parser.add_argument("--ours", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--finetune-epochs", type=int, help="epochs for our fine-tuning runs (default: the method's)")
    parser.add_argument("--ours-args", default="", help="more `transfer train` options for our runs, e.g. "
                                                        "'--precision fp32' to measure without bfloat16")
    parser.add_argument("--rounds", type=int, default=1, help="alternate ours and the peer this many times")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} not found", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    rounds = []
    for _ in range(max(1, args.rounds)):
        ours, peers = measure_ours(args), measure_peers(args)
        rows, checks = table_rows(ours, peers, args.peer_epochs)
        print_table(rows)
        rounds.append({"ours": ours, "peers": peers, "targets": checks, "load_average": os.getloadavg()})
    targets = dict(rounds[-1]["targets"])
    ratios = [r["targets"][RATIO]["value"] for r in rounds if RATIO in r["targets"]]
    if ratios:
        median = statistics.median(ratios)
        targets[RATIO] = {"value": round(median, 3), "rounds": ratios, "target": "<= 0.5", "met": median <= 0.5}
        print(f"finetune lite0 epoch / peer epoch: {', '.join(map(str, ratios))} (median {median:.3f})")
    print(json.dumps({"benchmark": "tutorial", "data": str(args.data), "cpu_count": os.cpu_count(),
                      "load_average_before": load_before, "load_average_after": os.getloadavg(),
                      "peer_epochs": args.peer_epochs, "ours_args": args.ours_args, "ours": rounds[-1]["ours"],
                      "peers": rounds[-1]["peers"], "targets": targets, "rounds": rounds}))
    return 0


def measure_ours(args) -> dict:
    ours = {}
    for name in [n for n in args.ours.split(",") if n]:
        method, backbone = CONFIGS[name]
        extra = ["--epochs", str(args.finetune_epochs)] if method == "finetune" and args.finetune_epochs else []
        extra += shlex.split(args.ours_args)
        with tempfile.TemporaryDirectory(prefix="bench-tutorial-") as home:
            passes = ("cold", "warm") if method == "features" else ("cold",)
            for label in passes:
                result = run_transfer_train(args.data, method, backbone, Path(home), extra)
                ours[f"{name} {label}"] = result
                print(f"ours {name} {label}: best {result['best_val_accuracy']:.3f} in {result['wall_seconds']:.1f} s, "
                      f"epochs {result['epoch_seconds']} s", file=sys.stderr, flush=True)
    return ours


def measure_peers(args) -> dict:
    if args.skip_peer:
        return {}
    from tutorial_peer import train_peer

    peers = {}
    for variant in [v for v in args.peer_variants.split(",") if v]:
        result = train_peer(args.data, "efficientnet_lite0", fixed_features=variant == "features",
                            epochs=args.peer_epochs, log=lambda text: print(text, file=sys.stderr, flush=True))
        peers[variant] = result.to_dict()
    return peers


RATIO = "finetune lite0 epoch / peer epoch"


def table_rows(ours: dict, peers: dict, peer_epochs: int) -> tuple[list[dict], dict]:
    rows, checks = [], {}
    for name, result in peers.items():
        rows.append({"run": f"peer {result['variant']} (Lite0, {peer_epochs} ep)", "best_acc": result["best_val_accuracy"],
                     "seconds": result["seconds"], "epoch_s": result["mean_epoch_seconds"]})
    for name, result in ours.items():
        epochs = result["epoch_seconds"]
        rows.append({"run": f"transfer train {name}", "best_acc": result["best_val_accuracy"],
                     "seconds": result["wall_seconds"],
                     "epoch_s": round(sum(epochs) / len(epochs), 2) if epochs else None})

    def check(key: str, value, target: str, met: bool) -> None:
        checks[key] = {"value": value, "target": target, "met": bool(met)}

    for label in ("cold", "warm"):
        lite0 = ours.get(f"features-lite0 {label}")
        if lite0:
            check(f"features lite0 {label} accuracy", lite0["best_val_accuracy"], ">= 0.94", lite0["best_val_accuracy"] >= 0.94)
            check(f"features lite0 {label} seconds", lite0["wall_seconds"], "<= 35", lite0["wall_seconds"] <= 35)
        lite2 = ours.get(f"features-lite2 {label}")
        if lite2:
            check(f"features lite2 {label} accuracy", lite2["best_val_accuracy"], ">= 0.95", lite2["best_val_accuracy"] >= 0.95)
            check(f"features lite2 {label} seconds", lite2["wall_seconds"], "<= 35", lite2["wall_seconds"] <= 35)
    if "finetune-lite2 cold" in ours:
        value = ours["finetune-lite2 cold"]["best_val_accuracy"]
        check("finetune lite2 accuracy", value, ">= 0.95", value >= 0.95)
    if "finetune-lite0 cold" in ours:
        value = ours["finetune-lite0 cold"]["best_val_accuracy"]
        check("finetune lite0 accuracy", value, ">= 0.94", value >= 0.94)
    if "finetune-lite0 cold" in ours and "finetune" in peers:
        epochs = ours["finetune-lite0 cold"]["epoch_seconds"]
        ratio = (sum(epochs) / len(epochs)) / peers["finetune"]["mean_epoch_seconds"]
        check(RATIO, round(ratio, 3), "<= 0.5", ratio <= 0.5)
    if "features-lite0 cold" in ours and "features" in peers and peers["features"]["epochs"] == 25:
        ratio = ours["features-lite0 cold"]["wall_seconds"] / peers["features"]["seconds"]
        check("features lite0 cold / peer fixed extractor time", round(ratio, 3), "<= 0.1", ratio <= 0.1)
    return rows, checks


def print_table(rows: list[dict]) -> None:
    print(f"{'run':<50} {'best acc':>9} {'seconds':>9} {'s/epoch':>8}")
    for row in rows:
        epoch = "-" if row["epoch_s"] is None else f"{row['epoch_s']:.2f}"
        print(f"{row['run']:<50} {row['best_acc']:>9.3f} {row['seconds']:>9.1f} {epoch:>8}")


if __name__ == "__main__":
    sys.exit(main())
