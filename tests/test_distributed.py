"""Distributed training on two CPU ranks (gloo), started by torchrun as the launching worker does.

The ranks are real processes running ``python -m transfer.training.distributed RUN_DIR`` on tiny
generated pictures at 32 px, one thread each; the comparisons are with the same run trained
in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfer.training.config import TrainConfig
from transfer.training.distributed import OUTCOME_FILE, main, share_the_cores
from transfer.training.ranks import SeededShardSampler, contiguous_chunk, is_main, rank, world_size
from transfer.core.runs import FINISHED, RunDir
from transfer.training.run import PREDICTIONS_FILE, train_run

from waiting import wait_for

REPOSITORY = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, device="cpu", batch_size=8)


def make_run(runs_dir: Path, data: Path, method: str, **overrides) -> RunDir:
    config = TrainConfig.for_method(method, dataset=str(data), **{**SMALL, **overrides})
    return RunDir.create(runs_dir, config.to_dict())


def start_ranks(run: RunDir, home: Path) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m transfer.training.distributed RUN_DIR`` with its own
    TRANSFER_HOME, so nothing it computes is shared with the in-process comparison."""
    env = {**os.environ, "TRANSFER_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "transfer.training.distributed", str(run.path)]
    log = open(run.path.parent / f"{run.id}.torchrun.log", "ab")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)


def finish(process: subprocess.Popen, run: RunDir, timeout: float = 240) -> int:
    code = process.wait(timeout=timeout)
    print((run.path.parent / f"{run.id}.torchrun.log").read_text()[-3000:])
    return code


def outcome(run: RunDir) -> dict | None:
    path = run.path / OUTCOME_FILE
    return json.loads(path.read_text()) if path.exists() else None


def probabilities(run: RunDir) -> torch.Tensor:
    predictions = json.loads((run.path / PREDICTIONS_FILE).read_text())["predictions"]
    return torch.tensor([p["probabilities"] for p in predictions])


def rank_processes(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes."""
    found = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environment = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environment:
            if entry.startswith(b"RANK="):
                found[int(entry[5:])] = int(child)
    return found


# --------------------------------------------------------------------------- without processes


def test_without_a_process_group_this_is_the_only_rank():
    assert (world_size(), rank(), is_main()) == (1, 0, True)


def test_ranks_on_one_machine_share_its_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("TRANSFER_WORKER_THREADS", "1" if len(os.sched_getaffinity(0)) < 2 else "2")
    share_the_cores()
    assert os.environ["TRANSFER_WORKER_THREADS"] == "1"


def test_one_rank_is_plain_training_with_an_outcome(tmp_path, tiny_dataset, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    run = make_run(tmp_path / "runs", tiny_dataset, "features", epochs=1)
    (run.path / OUTCOME_FILE).write_text('{"state": "failed", "message": "an earlier attempt"}')
    assert main([str(run.path)]) == 0
    assert outcome(run)["state"] == FINISHED and run.state == FINISHED
    assert "world_size" not in run.events("info")[0]


@pytest.mark.parametrize("world", [2, 3])
def test_the_sampler_shares_every_batch_out_disjointly_and_repeats_after_a_resume(world):
    size, batch = 23, 8
    for epoch in (1, 2):
        shards = [SeededShardSampler(size, seed=5, world=world, rank_index=r).epoch_shards(epoch, batch)
                  for r in range(world)]
        order = SeededShardSampler(size, seed=5).order(epoch)
        for step, start in enumerate(range(0, size, batch)):
            parts = [shards[r][step].tolist() for r in range(world)]
            together = sorted(i for part in parts for i in part)
            assert together == sorted(order[start : start + batch].tolist())  # disjoint, the whole batch
        assert sorted(i for rank_shards in shards for s in rank_shards for i in s.tolist()) == list(range(size))
        resumed = SeededShardSampler(size, seed=5, world=world, rank_index=1).epoch_shards(epoch, batch)
        assert all(torch.equal(a, b) for a, b in zip(resumed, shards[1]))
    first, second = (SeededShardSampler(size, seed=5).order(e) for e in (1, 2))
    assert not torch.equal(first, second)
    assert not torch.equal(first, SeededShardSampler(size, seed=6).order(1))


def test_contiguous_chunks_cover_everything_once():
    for count in (0, 1, 5, 30):
        chunks = [contiguous_chunk(count, 4, r) for r in range(4)]
        assert [i for start, end in chunks for i in range(start, end)] == list(range(count))


# --------------------------------------------------------------------------- two ranks


def test_feature_transfer_on_two_ranks_gives_the_one_process_result(tmp_path, tiny_dataset):
    runs = tmp_path / "runs"
    two = make_run(runs, tiny_dataset, "features", epochs=2)
    assert finish(start_ranks(two, tmp_path / "home-ranks"), two) == 0
    assert outcome(two)["state"] == FINISHED and two.state == FINISHED
    assert [p for p in runs.iterdir() if p.is_dir()] == [two.path]  # one run directory, written by rank 0
    for name in ("model.safetensors", "model.json", "labels.json", "checkpoint.pt", PREDICTIONS_FILE):
        assert (two.path / name).is_file(), name
    assert two.events("info")[0]["world_size"] == 2
    assert len(two.events("epoch")) == 1 and len(two.events("result")) == 1  # no rank wrote twice (one fit)
    features = [e for e in two.events("info") if "features_computed" in e][0]
    assert features["features_computed"] == 30  # both shards computed, counted together

    one = make_run(tmp_path / "one", tiny_dataset, "features", epochs=2)
    train_run(one)
    # Gathered features, then the same head training on every rank: the same numbers.
    assert torch.allclose(probabilities(two), probabilities(one), atol=1e-4)
    assert [e["val_accuracy"] for e in two.events("epoch")] == [e["val_accuracy"] for e in one.events("epoch")]


def test_a_cancel_request_stops_every_rank_together(tmp_path, tiny_dataset):
    run = make_run(tmp_path / "runs", tiny_dataset, "features", epochs=2)
    run.request_cancel()  # seen while the features are computed: no rank may wait for another
    assert finish(start_ranks(run, tmp_path / "home-ranks"), run, timeout=120) != 0
    assert outcome(run)["state"] == "cancelled"
    assert not run.events("epoch")


def test_finetuning_on_two_ranks_resumes_after_a_rank_is_killed(tmp_path, tiny_dataset):
    data = tiny_dataset
    epochs = 3
    # 24 training pictures in global batches of 23: the last batch's one picture leaves rank 1
    # with none, and it must still join the gradient exchange.
    two = make_run(tmp_path / "runs", data, "finetune", epochs=epochs, augmentation="none", batch_size=23)
    process = start_ranks(two, tmp_path / "home-ranks")
    wait_for(lambda: two.checkpoint_path.exists() or process.poll() is not None,
             "the first checkpoint of the ranks", timeout=120, interval=0.005)
    assert process.poll() is None, "the ranks ended before their first checkpoint"
    os.kill(rank_processes(process.pid)[1], signal.SIGKILL)
    assert finish(process, two, timeout=120) != 0
    ended = outcome(two)  # rank 0 may see its partner go before torchrun stops it
    assert ended is None or (ended["state"] == "failed" and "resuming continues" in ended["message"])
    kept = torch.load(two.checkpoint_path, weights_only=True)["epoch"]
    assert 1 <= kept < epochs, "every epoch finished before the kill"

    assert finish(start_ranks(two, tmp_path / "home-ranks"), two) == 0  # as `transfer resume` does
    assert outcome(two)["state"] == FINISHED
    status = two.status()
    assert status["state"] == FINISHED and status["epoch"] == epochs
    assert any(e.get("start_epoch") == kept + 1 for e in two.events("info"))
    assert sorted({e["epoch"] for e in two.events("epoch")}) == list(range(1, epochs + 1))

    one = make_run(tmp_path / "one", data, "finetune", epochs=epochs, augmentation="none", batch_size=23)
    train_run(one)
    val_pictures = len(probabilities(one))
    # Accuracies are stored rounded to 6 decimals: two pictures' worth may read as 0.333334 of 6.
    assert abs(status["best_val_accuracy"] - one.status()["best_val_accuracy"]) <= 2 / val_pictures + 1e-5
