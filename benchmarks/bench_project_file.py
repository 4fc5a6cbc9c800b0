"""A demo-data project with three finished runs, saved as one file and opened again.

    python benchmarks/bench_project_file.py [--backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]

Makes a project (in a temporary TRANSFER_HOME) whose data set is the packaged demo data, trains
one feature-transfer run per backbone in it, then times ``save_project`` (in this process, as
``transfer project save`` does; PyTorch already loaded) and ``open_project_file``, checks that
every run of the opened project predicts the demo pictures as the original does (same top
class, probabilities within 1e-6), and prints the file's layout (bytes per part of the file),
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path


def train_runs(project, backbones: list[str]) -> list:
    from transfer.core.runs import RunDir
    from transfer.data.dataset import demo_dataset_path, load_dataset
    from transfer.training.config import TrainConfig
    from transfer.training.run import train_run

    dataset = load_dataset(demo_dataset_path()).to_dict()
    runs = []
    for backbone in backbones:
        config = TrainConfig.for_method("features", dataset=dataset, backbone=backbone, seed=0, precision="fp32")
        run = RunDir.create(project.runs_dir, config.to_dict())
        train_run(run)
        runs.append(run)
    return runs


def layout(path: Path) -> dict[str, int]:
    """Bytes stored per kind of part: the manifest, settings, pictures, and each run's files."""
    parts: dict[str, int] = defaultdict(int)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if name.startswith("project/runs/"):
                key = "project/runs/<id>/" + name.rsplit("/", 1)[-1]
            elif name.count("/") > 1:
                key = "/".join(name.split("/")[:2]) + "/..."
            else:
                key = name
            parts[key] += info.compress_size
    return dict(sorted(parts.items(), key=lambda item: -item[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-project-") as home:
        os.environ["TRANSFER_HOME"] = home
        from transfer.data.dataset import demo_dataset_path
        from transfer.runtime import project_files, projects
        from transfer.serving.predict import Predictor

        project = projects.new_project("Demo data, three backbones")
        (project.path / "dataset.json").write_text(json.dumps({"source": str(demo_dataset_path()),
                                                               "name": "Demo data set"}))
        started = time.perf_counter()
        runs = train_runs(project, args.backbones.split(","))
        train_seconds = time.perf_counter() - started
        saved = project_files.save_project(project.id, Path(home) / "demo.transfer.zip")
        opened = project_files.open_project_file(saved.path)
        pictures = sorted(demo_dataset_path().rglob("*.jpg"))[::10]
        worst = 0.0
        for run in runs:
            before = Predictor.from_run(run.path, fast=False).predict(pictures, top_k=4)
            after = Predictor.from_run(opened.project.runs_dir / run.id, fast=False).predict(pictures, top_k=4)
            for old, new in zip(before, after):
                assert old.labels == new.labels, "the opened run answers differently"
                worst = max(worst, max(abs(a - b) for a, b in zip(old.probabilities, new.probabilities)))
        parts = layout(saved.path)
        print(f"{'part of the file':<46} {'bytes':>10}")
        for name, size in parts.items():
            print(f"{name:<46} {size:>10}")
        print(f"\nfile: {saved.bytes / 1e6:.2f} MB, {saved.parts} parts, {saved.runs} runs "
              f"(training the runs took {train_seconds:.0f} s)")
        print(f"save: {saved.seconds:.2f} s   open: {opened.seconds:.2f} s   "
              f"largest probability difference after the round trip: {worst:.1e} on {len(pictures)} pictures")
        print(json.dumps({"bytes": saved.bytes, "parts": saved.parts, "runs": saved.runs,
                          "save_seconds": round(saved.seconds, 3), "open_seconds": round(opened.seconds, 3),
                          "max_probability_difference": worst, "layout": parts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
