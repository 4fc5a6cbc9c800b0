"""Eight runs of four projects on this machine's queue and on a two-node Ray cluster, side by side.

    python benchmarks/bench_cluster.py [--runs 8] [--projects 4] [--pictures 10] [--local-parallel 1,2]
                                       [--head-cpus 1] [--worker-cpus 1] [--timeout 900]

Each project gets its own small generated data set (3 classes of pictures) and a runs folder
under one ``TRANSFER_HOME``; its runs are feature transfer of EfficientNet-Lite0 with the
method's defaults, submitted through ``JobManager`` as the web app and ``transfer train`` do,
all at once. Each back end gets a fresh ``TRANSFER_HOME`` (so neither finds the other's cached
features), in a process of its own:

- **local**: this machine's queue, once per ``TRANSFER_MAX_PARALLEL_JOBS`` in ``--local-parallel``
  (the studio's default is 1; 2 runs as many at once as the two-node cluster below);
- **ray**: a Ray cluster started here for the benchmark, a head and one worker node on
  127.0.0.1 (``--head-cpus``, ``--worker-cpus``; tests/raycluster.py), with
  ``TRANSFER_RAY_ADDRESS`` pointing at it. The cluster is started after the local runs ended,
  so that its idle processes do not weigh on them, and stopped at the end.

Reported per back end: how many runs finished; per run, the time from submit to its first epoch
(``created_at`` in status.json to the first ``epoch`` event: waiting in the queue, starting the
process, reading the pictures and computing features) and from the run's start to its first
epoch (without the wait); the quickest time from submit to a run's start (a run nobody was ahead of:
what handing a run over costs); the nodes the runs ran on (both of this cluster's nodes are this
machine, so they carry its name); the wall time from the first submit to the
last run's end; and the machine's load average while it ran (the machine may be shared).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CLASSES = ["red", "green", "blue"]
ACTIVE = ("queued", "running")


# ----------------------------------------------------------------------------- data


def write_project_data(folder: Path, project: int, pictures: int) -> Path:
    """3 class folders of generated pictures, different for every project."""
    from pictures import make_picture

    for class_index, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for number in range(pictures):
            make_picture(class_index, 100 * project + number, (64, 64)).save(folder / name / f"{name}_{number:03d}.png")
    return folder


# ----------------------------------------------------------------------------- one back end (its own process)


def run_phase(data_folders: list[Path], runs: int, timeout: float) -> dict:
    """Submit ``runs`` feature-transfer runs spread over one project per data folder, wait for
    them all, and describe each. Runs in a process whose environment chose the back end."""
    from transfer.data.dataset import load_dataset
    from transfer.runtime.jobs import JobManager
    from transfer.runtime.projects import new_project
    from transfer.training.config import TrainConfig

    projects = [new_project(f"Bench project {index + 1}") for index in range(len(data_folders))]
    datasets = [load_dataset(folder, val_fraction=0.2).to_dict() for folder in data_folders]
    started = time.time()
    submitted = []
    for number in range(runs):
        which = number % len(projects)
        config = TrainConfig.for_method("features", dataset=datasets[which], backbone="efficientnet_lite0", seed=number)
        manager = JobManager(projects[which].runs_dir)
        submitted.append((manager, manager.submit(config.to_dict())))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(manager.status(run)["state"] in ACTIVE for manager, run in submitted):
        time.sleep(0.5)
    wall = time.time() - started
    return {"wall_seconds": round(wall, 2), "runs": [describe(run, projects) for _, run in submitted]}


def describe(run, projects) -> dict:
    status = run.status()
    epochs = run.events("epoch")
    first_epoch = epochs[0]["time"] if epochs else None
    created, began = status.get("created_at"), status.get("started_at")
    return {
        "id": run.id,
        "project": next(p.name for p in projects if run.path.parent == p.runs_dir),
        "state": status["state"],
        "node": status.get("node"),
        "val_accuracy": status.get("val_accuracy"),
        "submit_to_start_s": round(began - created, 2) if began and created else None,
        "submit_to_first_epoch_s": round(first_epoch - created, 2) if first_epoch and created else None,
        "start_to_first_epoch_s": round(first_epoch - began, 2) if first_epoch and began else None,
        "seconds": run.summary().get("seconds"),
        "message": None if status["state"] == "finished" else status.get("message"),
    }


def phase_main(args) -> None:
    folders = [Path(folder) for folder in args.data]
    print(json.dumps(run_phase(folders, args.runs, args.timeout)), flush=True)


# ----------------------------------------------------------------------------- the comparison


class LoadWatch:
    """The machine's 1-minute load average, sampled every 2 s while a phase runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"mean": round(statistics.mean(self.samples), 2), "max": round(max(self.samples), 2)}


def measure(name: str, home: Path, data: list[Path], args, extra_env: dict) -> dict:
    """One back end's phase in a process of its own, with its own TRANSFER_HOME."""
    env = {**os.environ, "TRANSFER_HOME": str(home), "TRANSFER_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **extra_env}
    if "TRANSFER_RAY_ADDRESS" not in extra_env:  # this machine's queue, whatever the caller's shell says
        env.pop("TRANSFER_RAY_ADDRESS", None)
    command = [sys.executable, __file__, "--phase", "--runs", str(args.runs), "--timeout", str(args.timeout),
               "--data", *map(str, data)]
    with LoadWatch() as load:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout + 300)
    if done.returncode != 0:
        raise SystemExit(f"the {name} phase failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"backend": name, **summarise(result), "load_average": load.summary(), "runs": result["runs"]}


def summarise(result: dict) -> dict:
    runs = result["runs"]
    waits = [r["submit_to_first_epoch_s"] for r in runs if r["submit_to_first_epoch_s"] is not None]
    starts = [r["start_to_first_epoch_s"] for r in runs if r["start_to_first_epoch_s"] is not None]
    handed = [r["submit_to_start_s"] for r in runs if r["submit_to_start_s"] is not None]
    return {
        "finished": sum(r["state"] == "finished" for r in runs),
        "total": len(runs),
        "submit_to_first_epoch_median_s": round(statistics.median(waits), 2) if waits else None,
        "submit_to_first_epoch_max_s": round(max(waits), 2) if waits else None,
        "start_to_first_epoch_median_s": round(statistics.median(starts), 2) if starts else None,
        # The quickest start had nobody before it: what handing a run over costs, without waiting.
        "submit_to_start_min_s": round(min(handed), 2) if handed else None,
        "wall_seconds": result["wall_seconds"],
        "nodes": sorted({r["node"] for r in runs if r["node"]}),
    }


def start_two_node_cluster(head_cpus: int, worker_cpus: int):
    """A head and a worker node on this machine; returns the cluster and how long it took."""
    from raycluster import start_cluster

    began = time.perf_counter()
    cluster = start_cluster(num_cpus=head_cpus)
    cluster.add_worker_node(worker_cpus)
    return cluster, time.perf_counter() - began


def print_table(rows: list[dict]) -> None:
    columns = ["backend", "finished", "submit->1st epoch median", "max", "submit->start min",
               "start->1st epoch median", "wall", "load"]
    lines = [[row["backend"], f"{row['finished']}/{row['total']}", seconds(row["submit_to_first_epoch_median_s"]),
              seconds(row["submit_to_first_epoch_max_s"]), seconds(row["submit_to_start_min_s"]),
              seconds(row["start_to_first_epoch_median_s"]),
              seconds(row["wall_seconds"]), f"{row['load_average']['mean']:.1f} (max {row['load_average']['max']:.1f})"]
             for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def compare(work: Path, parallel: list[int], args) -> tuple[list[dict], float]:
    """The local queue (once per number of runs at a time), then the two-node cluster."""
    data = [write_project_data(work / "data" / f"p{index + 1}", index, args.pictures) for index in range(args.projects)]
    rows = [measure(f"local x{count}", work / f"home-local-{count}", data, args,
                    {"TRANSFER_MAX_PARALLEL_JOBS": str(count)}) for count in parallel]
    cluster, cluster_start = start_two_node_cluster(args.head_cpus, args.worker_cpus)
    try:
        rows.append(measure("ray", work / "home-ray", data, args, {"TRANSFER_RAY_ADDRESS": cluster.address}))
    finally:
        cluster.stop()
    return rows, cluster_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--pictures", type=int, default=10, help="pictures per class and project")
    parser.add_argument("--local-parallel", default="1,2",
                        help="TRANSFER_MAX_PARALLEL_JOBS of the local queue, one row each (comma-separated)")
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)  # one back end, in its own process
    parser.add_argument("--data", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase_main(args)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir="/tmp"))
    parallel = [int(value) for value in args.local_parallel.split(",")]
    try:
        rows, cluster_start = compare(work, parallel, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.runs} feature-transfer runs (EfficientNet-Lite0, {len(CLASSES)} x {args.pictures} pictures each) "
          f"of {args.projects} projects; cores: {os.cpu_count()}; local queue: x N = N runs at a time; "
          f"Ray: head {args.head_cpus} CPU + worker node {args.worker_cpus} CPU, started in {cluster_start:.1f} s")
    print_table(rows)
    for row in rows:
        unfinished = [f"{r['id']} {r['state']}" + (f" ({r['message']})" if r["message"] else "")
                      for r in row["runs"] if r["state"] != "finished"]
        print(f"{row['backend']}: ran on {', '.join(row['nodes']) or '?'}"
              + (f"; not finished: {'; '.join(unfinished)}" if unfinished else ""))
    print(json.dumps({"benchmark": "cluster", "runs": args.runs, "projects": args.projects, "cores": os.cpu_count(),
                      "local_parallel": parallel, "head_cpus": args.head_cpus,
                      "worker_cpus": args.worker_cpus, "cluster_start_seconds": round(cluster_start, 1),
                      "results": rows}))


if __name__ == "__main__":
    main()
