"""How much the decoded-image cache saves: cold decode vs warm disk cache vs memory.

    python benchmarks/bench_decode_cache.py [--data DIR] [--short-side 256] [--workers N]

Pass 1 (cold) and pass 2 (warm disk) each run in a fresh Python process against the same,
initially empty, cache folder, so pass 2 has no memory cache: it is what a second training
run sees. Pass 3 repeats the decode inside pass 2's process, answered from memory. The data
check (hashing and verifying every file) is timed on its own. Prints a table, then one JSON
line.
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

DEFAULT_DATA = Path("/work/shared/datasets/hymenoptera_data")


def run_passes(data: str, short_side: int, cache_root: str, workers: int | None, memory_pass: bool) -> dict:
    """One process's work: check the data, decode it through the cache (twice if asked)."""
    from transfer.data.cache import DecodedImageCache
    from transfer.data.dataset import load_dataset

    started = time.perf_counter()
    dataset = load_dataset(data)
    check_seconds = time.perf_counter() - started

    cache = DecodedImageCache(Path(cache_root), workers=workers)
    started = time.perf_counter()
    arrays = cache.decode_all(dataset.samples, short_side)
    result = {
        "images": len(arrays),
        "check_seconds": check_seconds,
        "seconds": time.perf_counter() - started,
        "decoded": cache.decoded,
        "disk_hits": cache.disk_hits,
        "megabytes": sum(a.nbytes for a in arrays) / 1e6,
        "workers": cache.workers,
    }
    if memory_pass:
        started = time.perf_counter()
        cache.decode_all(dataset.samples, short_side)
        result["memory_seconds"] = time.perf_counter() - started
        result["memory_hits"] = cache.memory_hits
    return result


def in_fresh_process(args, cache_root: str, memory_pass: bool) -> dict:
    command = [
        sys.executable, __file__, "--data", str(args.data), "--short-side", str(args.short_side),
        "--one-pass", cache_root,
    ]
    if args.workers:
        command += ["--workers", str(args.workers)]
    if memory_pass:
        command.append("--memory-pass")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores, at most 8)")
    parser.add_argument("--one-pass", metavar="CACHE_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_pass:
        print(json.dumps(run_passes(str(args.data), args.short_side, args.one_pass, args.workers, args.memory_pass)))
        return 0
    if not args.data.exists():
        print(f"no data at {args.data}; pass --data DIR", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as home:
        os.environ["TRANSFER_HOME"] = home  # the children's zip cache and defaults stay private
        cache_root = str(Path(home) / "decoded")
        cold = in_fresh_process(args, cache_root, memory_pass=False)
        warm = in_fresh_process(args, cache_root, memory_pass=True)
        disk_mb = folder_bytes(Path(cache_root)) / 1e6

    n = cold["images"]
    rows = [
        ("1 cold (decode + resize + write)", cold["seconds"], cold["decoded"]),
        ("2 warm disk (new process)", warm["seconds"], warm["decoded"]),
        ("3 memory (same process)", warm["memory_seconds"], 0),
    ]
    print(f"data: {args.data}  images: {n}  short side: {args.short_side}  threads: {cold['workers']}  "
          f"cpu cores: {os.cpu_count()}")
    print(f"data check (hash + verify every file): {cold['check_seconds']:.2f} s")
    print(f"{'pass':<34}{'seconds':>9}{'images/s':>11}{'decoded':>9}")
    for name, seconds, decoded in rows:
        print(f"{name:<34}{seconds:>9.3f}{n / max(seconds, 1e-9):>11.0f}{decoded:>9}")
    print(f"decoded arrays: {cold['megabytes']:.1f} MB in memory, {disk_mb:.1f} MB on disk; "
          f"warm disk pass is {cold['seconds'] / max(warm['seconds'], 1e-9):.1f}x faster than cold")
    summary = {
        "benchmark": "decode_cache",
        "data": str(args.data),
        "images": n,
        "short_side": args.short_side,
        "threads": cold["workers"],
        "cpu_cores": os.cpu_count(),
        "check_seconds": round(cold["check_seconds"], 4),
        "cold_seconds": round(cold["seconds"], 4),
        "warm_disk_seconds": round(warm["seconds"], 4),
        "memory_seconds": round(warm["memory_seconds"], 4),
        "warm_decoded": warm["decoded"],
        "speedup_warm_vs_cold": round(cold["seconds"] / max(warm["seconds"], 1e-9), 1),
        "cache_megabytes": round(disk_mb, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
