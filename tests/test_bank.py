"""The picture bank: decoded squares in one file on disk, read per batch, exactly as the in-memory bank."""

from __future__ import annotations

import os
import shutil
import time
from collections import namedtuple

import numpy as np
import pytest
import torch

from transfer.data import bank as bank_module
from transfer.runtime import gc
from transfer.core import paths
from transfer.data.augment import augment_batch, eval_batch, get_preset, stack_squares
from transfer.data.picture import Preprocessing
from transfer.data.bank import BankError, PictureBank, bank_path, open_or_build
from transfer.data.cache import DecodedImageCache
from transfer.data.dataset import load_dataset
from transfer.data.samples import Sample

SIDE = 32
PREP = Preprocessing(input_size=28, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear",
                     crop_pct=28 / 32)


@pytest.fixture
def samples(tiny_dataset) -> list[Sample]:
    dataset = load_dataset(tiny_dataset)
    return dataset.train + dataset.val


@pytest.fixture
def in_memory(samples) -> torch.Tensor:
    """The bank as fine-tuning kept it before: every square in one uint8 tensor."""
    return stack_squares(DecodedImageCache().decode_all(samples, SIDE), SIDE)


def files_in(folder) -> list[str]:
    """Banks and temporary files (the empty lock files that let one process build a bank stay)."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith(".lock-"))


def test_batches_are_exactly_those_of_the_in_memory_bank(samples, in_memory):
    bank, stats = open_or_build(samples, SIDE)
    assert len(bank) == len(samples) and bank.side == SIDE and not stats.reused
    generator = np.random.default_rng(0)
    for indices in ([0], [5, 2, 2, 29, 0], list(range(len(samples))), generator.permutation(len(samples))[:16]):
        assert torch.equal(bank.take(torch.tensor(indices)), in_memory[torch.tensor(indices)])
    shuffled = torch.randperm(len(samples), generator=torch.Generator().manual_seed(3))[:12]
    for preset in ("light", "strong"):
        from_disk = augment_batch(bank.take(shuffled), PREP, get_preset(preset),
                                  generator=torch.Generator().manual_seed(7))
        from_memory = augment_batch(in_memory[shuffled], PREP, get_preset(preset),
                                    generator=torch.Generator().manual_seed(7))
        assert torch.equal(from_disk, from_memory)
    # Validation reads in order, a batch at a time, and the file maps as the plain array it is.
    assert torch.equal(torch.cat([eval_batch(b, PREP) for b in bank.batches(7)]), eval_batch(in_memory, PREP))
    assert np.array_equal(np.load(bank.path, mmap_mode="r"), in_memory.numpy())


def test_rows_of_a_bank_are_a_bank(samples, in_memory):
    bank, _ = open_or_build(samples, SIDE)
    n_train = 20
    train, val = bank.rows(0, n_train), bank.rows(n_train, len(bank))
    assert (len(train), len(val)) == (n_train, len(samples) - n_train)
    assert torch.equal(val.take([3, 0, 1]), in_memory[[n_train + 3, n_train, n_train + 1]])
    assert torch.equal(torch.cat(list(val.batches(4))), in_memory[n_train:])
    with pytest.raises(IndexError):
        val.take([len(val)])
    with pytest.raises(IndexError):
        train.take([-1])


def test_a_bank_is_built_once_and_shared_pictures_decode_once(samples):
    bank, first = open_or_build(samples, SIDE)
    assert first.decoded == len(samples) and first.cached == 0
    again, second = open_or_build(samples, SIDE)
    assert second.reused and second.decoded == 0 and again.path == bank.path
    # Another data set (here: the same pictures in another order, plus none new) gets its own
    # bank, filled from the per-picture decode cache: nothing is decoded twice.
    other, third = open_or_build(list(reversed(samples)), SIDE)
    assert other.path != bank.path and third.decoded == 0 and third.cached == len(samples)
    assert torch.equal(other.take([0]), bank.take([len(samples) - 1]))
    assert files_in(paths.cache_dir("banks")) == sorted([bank.path.name, other.path.name])


def test_copies_of_one_picture_are_decoded_once_and_fill_every_row(samples):
    copy = Sample(samples[0].path, samples[0].label, samples[0].split, samples[0].sha256)
    seen = []
    bank, stats = open_or_build([samples[0], samples[1], copy], SIDE, progress=lambda d, t: seen.append((d, t)))
    assert stats.decoded == 2 and seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert torch.equal(bank.take([0]), bank.take([2]))


def test_a_killed_build_leaves_no_bank_and_a_damaged_one_is_rebuilt(samples, in_memory):
    folder = paths.cache_dir("banks")

    def cancel(done: int, total: int) -> None:
        if done >= 5:
            raise KeyboardInterrupt  # what a cancelled run's progress callback does, roughly

    with pytest.raises(KeyboardInterrupt):
        open_or_build(samples, SIDE, progress=cancel)
    assert files_in(folder) == []  # neither a bank nor its temporary file
    bank, _ = open_or_build(samples, SIDE)
    path = bank.path
    bank.close()
    with open(path, "r+b") as stream:
        stream.truncate(path.stat().st_size - 100)  # as if the disk lost its end
    rebuilt, stats = open_or_build(samples, SIDE)
    assert not stats.reused and torch.equal(rebuilt.take(range(len(samples))), in_memory)


def test_stale_temporary_files_of_killed_builds_are_removed(samples):
    folder = paths.cache_dir("banks")
    stale, fresh = folder / ".tmp-old-killed.npy", folder / ".tmp-busy-now.npy"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"x" * 100)
    long_ago = time.time() - bank_module.STALE_TEMP_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    open_or_build(samples, SIDE)
    assert not stale.exists() and fresh.exists()  # a build that is still writing is left alone


def test_a_full_disk_is_a_sentence_not_a_traceback(samples, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(BankError, match="Not enough disk space for the decoded pictures.*transfer gc"):
        open_or_build(samples, SIDE)
    assert files_in(paths.cache_dir("banks")) == []


def test_transfer_gc_counts_and_sweeps_banks(samples, transfer_home):
    bank, _ = open_or_build(samples, SIDE)
    bank.close()
    size = bank.path.stat().st_size
    long_ago = time.time() - 2 * 86400
    os.utime(bank.path, (long_ago, long_ago))
    result = gc.collect(max_idle_days=30, max_cache_gb=0)
    assert result.cache_bytes_before >= size and not bank.path.exists()
    assert any(entry["entry"] == f"banks/{bank.path.name}" for entry in result.cache_entries_removed)


def test_bank_path_depends_on_contents_order_size_and_interpolation(samples):
    hashes = [s.sha256 for s in samples]
    names = {bank_path(hashes, 32, "bilinear"), bank_path(hashes[::-1], 32, "bilinear"),
             bank_path(hashes, 40, "bilinear"), bank_path(hashes, 32, "bicubic")}
    assert len(names) == 4 and bank_path(hashes, 32, "bilinear") == bank_path(list(hashes), 32, "bilinear")


def test_an_empty_bank_reads_as_empty(tmp_path):
    bank, _ = open_or_build([], SIDE)
    assert len(bank) == 0 and bank.take([]).shape == (0, SIDE, SIDE, 3) and list(bank.batches(4)) == []
    assert isinstance(PictureBank(bank.path), PictureBank)


def test_device_batches_on_the_cpu_read_the_file_and_match_memory(samples, in_memory):
    from transfer.data.bank import DeviceBatches

    bank, _ = open_or_build(samples, SIDE)
    for resident in (False, True):  # a copy in (device) memory, as a GPU keeps one that fits
        batches = DeviceBatches(bank.rows(4, len(bank)), "cpu", resident=resident)
        assert (batches.resident is not None) == resident and not batches.pinned and len(batches) == len(bank) - 4
        assert torch.equal(batches.take(torch.tensor([3, 0, 7])), in_memory[[7, 4, 11]])
        assert torch.equal(torch.cat(list(batches.batches(5))), in_memory[4:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_batches_on_a_gpu_resident_or_pinned_give_the_same_pictures(samples, in_memory):
    from transfer.data.bank import DeviceBatches

    bank, _ = open_or_build(samples, SIDE)
    assert DeviceBatches(bank, "cuda").resident is not None  # a few kilobytes always fit
    for resident in (True, False):
        batches = DeviceBatches(bank, "cuda", resident=resident)
        assert batches.pinned == (not resident)
        taken = batches.take(torch.tensor([5, 1, 1]))
        assert taken.device.type == "cuda" and torch.equal(taken.cpu(), in_memory[[5, 1, 1]])
        assert torch.equal(torch.cat(list(batches.batches(8))).cpu(), in_memory)


def test_device_batches_read_like_the_tensor_they_replace(samples, in_memory):
    """What the training loop and the distributed ranks do with a bank: shape, index, slice."""
    from transfer.data.bank import DeviceBatches

    bank, _ = open_or_build(samples, SIDE)
    for source in (DeviceBatches(bank, "cpu"), DeviceBatches(in_memory, "cpu")):
        assert source.shape == in_memory.shape and source.dtype == torch.uint8 and source.device.type == "cpu"
        indices = torch.tensor([9, 3])
        assert torch.equal(source[indices.to(source.device)], in_memory[indices])
        part = source[10:20]
        assert part.shape[0] == 10 and torch.equal(part[torch.tensor([0, 9])], in_memory[[10, 19]])
        assert torch.equal(torch.cat(list(part.batches(3))), in_memory[10:20])
        assert len(source[25:10]) == 0
        with pytest.raises(IndexError):
            source[::2]


def test_processes_wanting_the_same_bank_build_it_once(samples, tmp_path, transfer_home):
    import subprocess
    import sys

    script = (
        "import sys; from transfer.data.bank import open_or_build; from transfer.data.dataset import load_dataset\n"
        f"d = load_dataset({str(samples[0].path.parents[1])!r}); s = d.train + d.val\n"
        f"bank, stats = open_or_build(s, {SIDE}); print(stats.reused)\n"
    )
    env = {**os.environ, "TRANSFER_HOME": str(transfer_home)}
    children = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    answers = sorted(child.communicate()[0].strip() for child in children)
    assert answers == ["False", "True"]  # one built it, the other waited and found it complete
    assert len(list(paths.cache_dir("banks").glob("*.npy"))) == 1


def test_fine_tuning_reads_its_pictures_from_a_bank_built_once(tiny_dataset, tmp_path):
    from transfer.training.config import TrainConfig
    from transfer.core.runs import FINISHED, RunDir
    from transfer.training.run import train_run

    config = TrainConfig.for_method("finetune", dataset=str(tiny_dataset), image_size=32, device="cpu", epochs=1,
                                    batch_size=8, probe_init=False)
    ready = []
    for attempt in range(2):
        run = RunDir.create(tmp_path / "runs", config.to_dict())
        train_run(run)
        assert run.state == FINISHED
        assert any(e["phase"] == "decode" for e in run.events("progress"))
        ready += [e for e in run.events("info") if e["message"].startswith("Pictures ready")]
    banks = list(paths.cache_dir("banks").glob("*.npy"))
    assert len(banks) == 1 and ready[0]["bank_bytes"] == banks[0].stat().st_size - PictureBank(banks[0]).data_offset
    assert ready[0]["images_decoded"] == 30 and ready[1]["images_decoded"] == 0 and ready[1]["images_cached"] == 30
