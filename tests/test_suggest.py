"""Pools of unlabelled pictures, the order to label them in, and `transfer suggest`."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from transfer.cli.main import main
from transfer.data.dataset import check_dataset
from transfer.core.errors import TransferError
from transfer.data.pool import (
    add_files_pool,
    add_zip_pool,
    delete_pool,
    list_pools,
    pool_pictures,
)
from transfer.core.quota import DiskQuota
from transfer.analysis.suggest import (
    hesitation_order,
    order_pool,
    reason_for,
    reduce_features,
    typical_picks,
    typicality,
)
from transfer.data.working_copy import WorkingCopy


def clustered(sizes: list[int], seed: int = 0, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Points around one centre per kind (``sizes`` points each) and the kind of each point."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 4
    points = np.concatenate([centres[k] + rng.normal(size=(n, dim)) for k, n in enumerate(sizes)])
    kinds = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    return points.astype(np.float32), kinds


# --------------------------------------------------------------------------- the ordering


def test_typical_picks_cover_every_kind_even_a_rare_one_where_random_picks_do_not():
    sizes = [200, 200, 200, 200, 8]  # one rare kind: 1 % of the pool
    points, kinds = clustered(sizes)
    reduced = reduce_features(points)
    picks = typical_picks(reduced, np.zeros((0, reduced.shape[1]), np.float32), count=5)
    assert sorted(kinds[[p.index for p in picks]].tolist()) == [0, 1, 2, 3, 4]
    assert all(p.kind == "typical" for p in picks)
    rng = np.random.default_rng(1)
    random_cover = np.mean([len(set(kinds[rng.choice(len(kinds), 5, replace=False)])) for _ in range(200)])
    assert random_cover < 4.5  # random picks miss a kind most of the time


def test_pictures_near_labelled_ones_come_after_what_nothing_labelled_covers():
    points, kinds = clustered([100, 100, 100])
    reduced = reduce_features(points)
    labelled = np.flatnonzero(kinds == 0)[:3]  # kind 0 is covered already
    pool = np.setdiff1d(np.arange(len(points)), labelled)
    picks = typical_picks(reduced[pool], reduced[labelled], count=2)
    assert sorted(kinds[pool][[p.index for p in picks]].tolist()) == [1, 2]


def test_the_most_typical_picture_lies_where_its_group_is_densest():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    core = direction + 0.1 * rng.normal(size=(40, 32))
    halo = direction + 1.0 * rng.normal(size=(260, 32))
    points = np.concatenate([halo, core])
    unit = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    assert typicality(unit).argmax() >= len(halo)


def test_hesitation_joins_once_classes_have_a_few_labels():
    points, _ = clustered([50, 50])
    reduced = reduce_features(points)
    probabilities = np.tile([0.99, 0.01], (100, 1)).astype(np.float32)
    probabilities[37] = [0.51, 0.49]  # the one the model hesitates about
    assert hesitation_order(probabilities)[0] == 37
    few = order_pool(reduced, reduced[:0], 4, probabilities=probabilities, labelled_per_class=1)
    assert all(p.kind != "hesitant" for p in few)
    many = order_pool(reduced, reduced[:0], 4, probabilities=probabilities, labelled_per_class=10)
    assert [p.kind for p in many][:2] == ["typical", "hesitant"] and many[1].index == 37
    assert "hesitates between ants and bees (51% / 49%)" in reason_for(many[1], probabilities, ["ants", "bees"])
    assert len({p.index for p in many}) == 4


# --------------------------------------------------------------------------- pools


def test_pools_are_kept_per_session_with_the_upload_rules(tmp_path, png):
    uploads = tmp_path / "uploads"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/one.png", png(0, 1))
        archive.writestr("photos/two.png", png(1, 2))
        archive.writestr("../evil.png", png(1, 3))
        archive.writestr("notes.txt", b"not a picture")
    folder = add_zip_pool(buffer.getvalue(), uploads, name="holiday.zip")
    assert not (tmp_path / "evil.png").exists()
    assert [p.name for p in pool_pictures(folder)] == ["photos/one.png", "photos/two.png"]
    dropped = add_files_pool([("a.png", png(2, 1)), ("broken.png", b"garbage")], uploads, name="dropped pictures")
    assert [p.name for p in pool_pictures(dropped)] == ["a.png"]
    pools = list_pools(uploads)
    assert {p.name for p in pools} == {"holiday.zip", "dropped pictures"}
    delete_pool(uploads, pools[0].id)
    assert len(list_pools(uploads)) == 1
    with pytest.raises(TransferError, match="quota"):
        add_files_pool([("b.png", png(2, 2))], tmp_path / "full" / "uploads",
                       quota=DiskQuota(tmp_path / "full", limit=10))


# --------------------------------------------------------------------------- labels join the working copy


def test_added_pictures_go_to_training_and_never_move_a_validation_picture(tmp_path, write_class_folders, png):
    source = write_class_folders(tmp_path / "data", {"red": 10, "green": 10})
    before = check_dataset(source).dataset
    copy = WorkingCopy(tmp_path / "copy")
    copy.materialise(before, source)
    edits = [copy.add(png(0, 100 + i), "red", name=f"new{i}.png", origin="pool") for i in range(5)]
    after = check_dataset(copy.data).dataset
    assert {s.sha256 for s in after.val} == {s.sha256 for s in before.val}
    assert after.counts()["red"]["train"] == before.counts()["red"]["train"] + 5
    with pytest.raises(TransferError, match="already"):
        copy.add(png(0, 101), "red", name="again.png")
    copy.undo(edits[0]["id"])
    assert check_dataset(copy.data).dataset.counts()["red"]["train"] == before.counts()["red"]["train"] + 4
    assert set(copy.added()) == {hashlib.sha256(png(0, 100 + i)).hexdigest() for i in range(1, 5)}


def test_a_new_data_set_grows_from_labelled_pictures(tmp_path, png):
    copy = WorkingCopy(tmp_path / "copy")
    copy.start_empty()
    for i in range(4):
        for label, colour in (("cat", 0), ("dog", 1)):
            copy.add(png(colour, i), label, name=f"{label}{i}.png", split="val" if i == 0 else "train")
    dataset = check_dataset(copy.data).dataset
    assert dataset.counts() == {"cat": {"train": 3, "val": 1}, "dog": {"train": 3, "val": 1}}
    with pytest.raises(TransferError, match="class name"):
        copy.add(png(0, 9), "../x", name="x.png")


# --------------------------------------------------------------------------- the whole suggestion


@pytest.fixture
def pool(tmp_path, write_class_folders) -> Path:
    """Generated pictures of three common kinds and one rare kind (2 of 32)."""
    return write_class_folders(tmp_path / "pool", {"red": 10, "green": 10, "blue": 10, "yellow": 2})


def test_transfer_suggest_without_a_run_covers_the_pool_kinds(pool, capsys):
    assert main(["suggest", str(pool), "--count", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    suggestions = result["suggestions"]
    assert len(suggestions) == 4
    assert {s["file"].split("/")[0] for s in suggestions} == {"red", "green", "blue", "yellow"}
    for item in suggestions:
        assert set(item) == {"file", "guess", "probability", "unknown", "reason"}
        assert item["guess"] is None and item["unknown"] is None
        assert "nothing labelled resembles yet" in item["reason"]
    assert main(["suggest", str(pool), "--count", "0"]) == 2
    assert "between 1 and" in capsys.readouterr().err


def test_transfer_suggest_with_a_run_guesses_and_skips_its_pictures(pool, tmp_path, write_class_folders, capsys):
    from transfer.training.config import TrainConfig
    from transfer.core.runs import FINISHED, RunDir
    from transfer.training.run import train_run

    labelled = write_class_folders(tmp_path / "labelled", {"red": 4, "green": 4, "blue": 4})
    config = TrainConfig.for_method("features", dataset=str(labelled), epochs=5, batch_size=8, device="cpu")
    run = RunDir.create(tmp_path / "runs", config.to_dict())
    train_run(run)
    assert run.state == FINISHED
    assert main(["suggest", str(pool), "--run", str(run.path), "--count", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["labelled"] == 12
    assert result["pictures"] == 32 - 12  # the run's pictures (the same files) are not suggested again
    files = [s["file"] for s in result["suggestions"]]
    assert any(f.startswith("yellow/") for f in files)  # the one kind the run never saw
    for item in result["suggestions"]:
        assert item["guess"] in {"red", "green", "blue"} and 0 < item["probability"] <= 1

    # The data set holds the run's pictures again (the same files) and 4 more reds from the pool:
    # each picture counts once, and asked to, the order favours the classes with the fewest labels.
    from transfer.data.samples import Sample, TRAIN

    samples = [Sample(path, path.parent.name, TRAIN, hashlib.sha256(path.read_bytes()).hexdigest())
               for path in sorted(labelled.rglob("*.png"))]
    samples += [Sample(pool / "red" / f"red_{i:03d}.png", "red", TRAIN,
                       hashlib.sha256((pool / "red" / f"red_{i:03d}.png").read_bytes()).hexdigest()) for i in range(4, 8)]
    from transfer.analysis.suggest import suggest

    as_is = suggest(pool, run_dir=run.path, labelled=samples, count=4)
    assert as_is.labelled == 16 and as_is.labelled_per_class == {"red": 8, "green": 4, "blue": 4}
    assert as_is.pictures == 32 - 16 and not as_is.evened  # evening out is asked for, not the default
    uneven = suggest(pool, run_dir=run.path, labelled=samples, count=4, even_out=True)
    assert uneven.evened and all(item.guess != "red" for item in uneven.suggestions)


def test_labelling_in_the_evened_order_evens_the_classes_out():
    from transfer.analysis.suggest import Pick, favour_fewest_labelled, is_uneven

    guesses = np.array([0] * 10 + [1] * 3 + [2] * 3)  # the order offers class 0 first, as typical pictures would
    picks = [Pick(i, "typical") for i in range(16)]
    chosen = favour_fewest_labelled(picks, guesses, [4, 1, 1], 6)
    assert sorted(guesses[[p.index for p in chosen]].tolist()) == [1, 1, 1, 2, 2, 2]
    assert [p.index for p in chosen][:2] == [10, 13]  # within a class, the given order is kept
    assert is_uneven([4, 1, 1]) and not is_uneven([2, 2, 3]) and not is_uneven([1, 2])


def test_the_suggestion_job_writes_its_result_for_the_page(pool, tmp_path, write_class_folders):
    from transfer.analysis import audit
    from transfer.analysis.suggest import main as job

    labelled = write_class_folders(tmp_path / "labelled", {"red": 3})
    folder = tmp_path / "job"
    assert job([str(pool), str(folder), "--count", "3", "--dataset", str(labelled)]) == 0
    result = json.loads((folder / audit.RESULT_FILE).read_text())
    assert result["labelled"] == 3 and result["pictures"] == 32 - 3
    assert result["labelled_per_class"] == {} and result["evened"] is False  # no run: no classes to even
    assert [s["kind"] for s in result["suggestions"]] == ["typical"] * 3
    assert not any(s["file"].startswith("red/red_00") and s["file"] < "red/red_003" for s in result["suggestions"])


def test_two_runs_compare_on_the_validation_pictures_they_share(tmp_path):
    from transfer.analysis.compare import compare_runs
    from transfer.core.files import atomic_write_json as write

    def run(name: str, answers: dict[str, tuple[str, str]]):
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "val_predictions.json", {"classes": ["ant", "bee"], "predictions": [
            {"path": f"val/{truth}/{sha}.jpg", "sha256": sha, "label": truth, "predicted": said,
             "probabilities": [0.8, 0.2] if said == "ant" else [0.2, 0.8]} for sha, (truth, said) in answers.items()]})
        return folder

    before = run("before", {"a": ("ant", "ant"), "b": ("ant", "bee"), "c": ("bee", "bee"), "d": ("bee", "ant"),
                            "gone": ("ant", "ant")})
    after = run("after", {"a": ("ant", "ant"), "b": ("ant", "ant"), "c": ("bee", "ant"), "d": ("bee", "bee"),
                          "e": ("bee", "bee")})
    result = compare_runs(before, after)
    assert (result.pictures, result.only_before, result.only_after) == (4, 1, 1)
    assert result.before_accuracy == 0.5 and result.after_accuracy == 0.75
    assert [c.sha256 for c in result.wrong_to_right] == ["b", "d"]
    assert [c.sha256 for c in result.right_to_wrong] == ["c"]


def test_asking_again_reads_remembered_features_without_loading_torch(pool, transfer_home):
    import os
    import subprocess
    import sys

    from transfer.analysis.suggest import suggest

    first = suggest(pool, count=3)
    probe = ("import sys; from transfer.analysis.suggest import suggest; "
             f"r = suggest({str(pool)!r}, count=3); print('torch' in sys.modules, r.features_computed, "
             "[s.file for s in r.suggestions])")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "TRANSFER_HOME": str(transfer_home), "PYTHONPATH": str(root)}).stdout
    assert out.strip() == f"False 0 {[s.file for s in first.suggestions]}"
