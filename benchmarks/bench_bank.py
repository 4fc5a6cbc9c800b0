"""Fine-tuning memory and speed with the picture bank, as the data set grows.

    nice -n 10 python benchmarks/bench_bank.py [--sizes 1000,5000,20000] [--steps 4]
                                               [--small 256] [--rounds 3] [--source DIR]

1. Memory against the number of pictures. For each size, ``--sizes`` distinct generated JPEG
   pictures (see ``bench_memory.make_pictures``; the smaller sets are hard links to the first
   pictures of the largest) are fine-tuned by a real worker process (``python -m
   transfer.runtime.worker RUN_DIR``) with an empty TRANSFER_HOME, Lite0 at its own 224 px, so the
   bank holds 256 px squares: 20,000 pictures are a 3.9 GB bank, more than the 2.5 GB target.
   A whole epoch of 16,000 training pictures takes about an hour on this 2-core CPU, so after
   ``--steps`` optimizer steps the benchmark asks the run to stop, as the Stop button does, and
   reads the worker's peak resident memory from the kernel (``wait4``'s ``ru_maxrss``). Those
   steps stand for the whole epoch: every step reads the same number of rows from the bank,
   the model, optimizer state and activations do not grow, and validation reads its batches
   the same way. The linear probe that starts fine-tuning (LP-FT) is switched off because it
   runs the frozen backbone over every training picture before the first step. Build seconds
   come from the "Pictures ready" event (decoding into the bank, including the per-picture
   decode cache on disk); seconds per step from the step events; epoch seconds are projected
   as seconds per step x steps per epoch. Target (issue 12): peak RSS <= 2.5 GB at 20,000
   pictures, and flat as the number grows.
2. Throughput of reading from the bank against reading from memory. On ``--small`` pictures,
   in this process, the same Lite0 training steps (batch 64 in parts of 16, as on the CPU)
   take their batches from the in-memory uint8 tensor and from the bank, alternating for
   ``--rounds`` rounds so the load of a shared machine hits both alike. Target: the bank
   within 10 % of memory.

Prints two tables, then one JSON line. Run it niced on a shared machine, once.

Measured on the project's 2-core CPU while five other sessions used it (load 7-11), with
``--steps 4 --rounds 2 --throughput-steps 2``: peak RSS 2.34 GB at 1,000 pictures (0.20 GB
bank), 2.38 GB at 5,000 (0.98 GB), 2.40 GB at 20,000 (3.93 GB bank, built in 143 s); what
remains is the model, its optimizer and a batch's activations, not the pictures. Reading
from the bank ran at 1.11x the in-memory speed on 256 pictures (noise of the load: reading
16 pictures takes about 13 ms either way against seconds for the step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import DEFAULT_SOURCE, TARGET_BYTES, make_pictures  # noqa: E402

BACKBONE = "efficientnet_lite0"
THROUGHPUT_TARGET = 0.9


# --------------------------------------------------------------------------- 1. memory


def subset(source: Path, target: Path, count: int) -> Path:
    """The first ``count`` pictures of ``source`` as hard links (same files, no extra disk)."""
    pictures = sorted(source.rglob("*.jpg"), key=lambda path: path.name)[:count]  # named by number: both classes
    for picture in pictures:
        link = target / picture.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(picture, link)
    return target


def run_until_steps(run, env: dict, steps: int) -> tuple[int, int]:
    """Start a worker on ``run``, ask it to stop after ``steps`` step events; (peak RSS, exit code)."""
    process = subprocess.Popen([sys.executable, "-m", "transfer.runtime.worker", str(run.path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # reaps with the child's resource use
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss * 1024, process.returncode
        if len(run.events("step")) >= steps and not run.cancel_requested():
            run.request_cancel()
        time.sleep(0.5)


def memory_row(data: Path, scratch: Path, count: int, steps: int) -> dict:
    from transfer.training.config import TrainConfig
    from transfer.data.dataset import load_dataset
    from transfer.core.runs import RunDir

    dataset = load_dataset(data).to_dict()
    config = TrainConfig.for_method("finetune", dataset=dataset, backbone=BACKBONE, epochs=1, probe_init=False)
    run = RunDir.create(scratch / "runs", config.to_dict())
    home = scratch / f"home-{count}"
    env = {**os.environ, "TRANSFER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    peak, code = run_until_steps(run, env, steps)
    ready = [e for e in run.events("info") if str(e.get("message", "")).startswith("Pictures ready")]
    step_events = run.events("step")
    per_step = None
    if len(step_events) >= 2:
        per_step = (step_events[-1]["elapsed"] - step_events[0]["elapsed"]) / (step_events[-1]["step"]
                                                                               - step_events[0]["step"])
    build = ready[0].get("decode_seconds") if ready else None
    if build is None and ready:
        found = re.search(r"in ([0-9.]+) s", ready[0]["message"])
        build = float(found.group(1)) if found else None
    banks = list((home / "cache" / "banks").glob("*.npy"))
    row = {"pictures": count, "peak_rss_bytes": peak, "peak_rss_gb": round(peak / 1e9, 3),
           "bank_gb": round(sum(p.stat().st_size for p in banks) / 1e9, 3),
           "build_seconds": build, "steps": len(step_events), "seconds_per_step": per_step and round(per_step, 2),
           "steps_per_epoch": step_events[-1]["steps"] if step_events else None,
           "state": run.status()["state"], "exit_code": code, "wall_seconds": round(time.perf_counter() - started, 1)}
    row["epoch_seconds_projected"] = round(per_step * row["steps_per_epoch"]) if per_step else None
    return row


# --------------------------------------------------------------------------- 2. throughput


def throughput(data: Path, rounds: int, steps: int) -> dict:
    import torch

    from transfer.data.augment import augment_batch, get_preset, preprocessing_for, stack_squares
    from transfer.models.backbones import get_backbone
    from transfer.data.bank import open_or_build
    from transfer.data.cache import DecodedImageCache
    from transfer.data.dataset import load_dataset
    from transfer.models.methods import create_model, prepare_model

    samples = load_dataset(data).samples
    prep = preprocessing_for(get_backbone(BACKBONE).preprocessing, None)
    side = prep.resize_size
    in_memory = stack_squares(DecodedImageCache().decode_all(samples, side, interpolation=prep.interpolation), side)
    bank, _ = open_or_build(samples, side, prep.interpolation)
    model = create_model(BACKBONE, 2, "finetune").to(memory_format=torch.channels_last)
    plan = prepare_model(model, "finetune", lr=1e-4)
    optimizer = torch.optim.AdamW(plan.param_groups)
    plan.train_mode()
    spec, labels = get_preset("light"), torch.zeros(64, dtype=torch.long)
    sources = {"memory": lambda rows: in_memory[rows], "bank": bank.take}
    seconds = {name: 0.0 for name in sources}
    read_seconds = {name: 0.0 for name in sources}
    pictures = 0
    for round_index in range(rounds + 1):  # round 0 warms up both and is not counted
        for name, read in sources.items():
            generator = torch.Generator().manual_seed(round_index)
            began = time.perf_counter()
            for _ in range(steps):
                rows = torch.randperm(len(samples), generator=generator)[:64]
                optimizer.zero_grad(set_to_none=True)
                for part in rows.split(16):
                    read_began = time.perf_counter()
                    images = read(part)
                    read_took = time.perf_counter() - read_began
                    with torch.no_grad():
                        x = augment_batch(images, prep, spec, generator=generator)
                    loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)),
                                                             labels[: len(part)])
                    (loss * len(part) / 64).backward()
                    if round_index:
                        read_seconds[name] += read_took
                optimizer.step()
            if round_index:
                seconds[name] += time.perf_counter() - began
        if round_index:
            pictures += steps * 64
    rate = {name: pictures / seconds[name] for name in sources}
    return {"pictures": len(samples), "rounds": rounds, "steps_per_round": steps,
            "memory_images_per_s": round(rate["memory"], 2), "bank_images_per_s": round(rate["bank"], 2),
            "bank_vs_memory": round(rate["bank"] / rate["memory"], 3),
            "read_ms_per_16_memory": round(1000 * read_seconds["memory"] / (pictures / 16), 3),
            "read_ms_per_16_bank": round(1000 * read_seconds["bank"] / (pictures / 16), 3),
            "met": rate["bank"] >= THROUGHPUT_TARGET * rate["memory"]}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per size before stopping the run")
    parser.add_argument("--small", type=int, default=256, help="pictures in the throughput comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throughput-steps", type=int, default=3, help="steps per source and round")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--processes", type=int, default=2, help="processes that write the pictures")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(",") if size)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bank-") as scratch:
        scratch = Path(scratch)
        largest = max(sizes + [args.small])
        began = time.perf_counter()
        all_pictures = make_pictures(scratch / f"data-{largest}", largest, args.source, processes=args.processes)
        print(f"{largest} pictures written in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        for count in sizes:
            data = all_pictures if count == largest else subset(all_pictures, scratch / f"data-{count}", count)
            rows.append(memory_row(data, scratch, count, args.steps))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        small = subset(all_pictures, scratch / "data-small", args.small)
        os.environ["TRANSFER_HOME"] = str(scratch / "home-throughput")
        through = throughput(small, args.rounds, args.throughput_steps)
        print(json.dumps(through), file=sys.stderr, flush=True)

    print(f"{'pictures':>8} {'bank GB':>8} {'peak RSS GB':>12} {'build s':>8} {'s/step':>7} {'epoch s':>8} {'state':>10}")
    for row in rows:
        print(f"{row['pictures']:>8} {row['bank_gb']:>8.2f} {row['peak_rss_gb']:>12.2f} {row['build_seconds'] or 0:>8.1f} "
              f"{row['seconds_per_step'] or 0:>7.2f} {row['epoch_seconds_projected'] or 0:>8} {row['state']:>10}")
    print(f"\n{'read from':>10} {'images/s':>9} {'ms per 16 read':>15}")
    for name in ("memory", "bank"):
        print(f"{name:>10} {through[name + '_images_per_s']:>9.2f} {through['read_ms_per_16_' + name]:>15.3f}")
    print(f"bank / memory: {through['bank_vs_memory']:.3f} (target >= {THROUGHPUT_TARGET})")
    peaks = [row["peak_rss_bytes"] for row in rows]
    met = bool(rows) and max(peaks) <= TARGET_BYTES and all(row["state"] == "cancelled" for row in rows)
    print(json.dumps({"benchmark": "bank", "backbone": BACKBONE, "memory": rows, "throughput": through,
                      "target": "peak RSS <= 2.5 GB at every size; bank >= 0.9 x memory images/s",
                      "met": met and through["met"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
