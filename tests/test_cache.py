"""DecodedImageCache: decode once, memory up to a budget, disk beyond it and across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transfer.core import paths
from transfer.data.cache import DecodedImageCache
from transfer.data.dataset import load_dataset
from transfer.data.samples import Sample
from transfer.data.images import ImageError


@pytest.fixture
def samples(tiny_dataset) -> list[Sample]:
    return load_dataset(tiny_dataset).samples


def test_arrays_have_the_requested_short_side(samples):
    cache = DecodedImageCache()
    for sample in samples[:3]:
        array = cache.get(sample, 32)  # pictures are 48 x 40: scaled down
        assert array.dtype == np.uint8 and array.shape == (32, 38, 3)
        assert cache.get(sample, 64).shape == (64, 77, 3)  # and up, so a 64 crop always fits
    assert not array.flags.writeable  # shared arrays must not be changed in place


def test_content_matches_a_plain_decode(samples):
    array = DecodedImageCache().get(samples[0], 40)
    expected = np.asarray(Image.open(samples[0].path).convert("RGB"))
    assert np.array_equal(array, expected)  # short side already 40: no resampling at all


def test_second_pass_decodes_nothing(samples):
    first = DecodedImageCache()
    arrays = first.decode_all(samples, 24)
    assert first.decoded == first.misses == len(samples) and first.hits == 0
    again = first.decode_all(samples, 24)
    assert first.decoded == len(samples) and first.memory_hits == len(samples)
    assert all(a is b for a, b in zip(arrays, again))

    fresh = DecodedImageCache()  # a new process state, same disk cache
    from_disk = fresh.decode_all(samples, 24)
    assert fresh.decoded == 0 and fresh.misses == 0 and fresh.disk_hits == len(samples)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, from_disk))


def test_another_size_is_another_entry(samples):
    cache = DecodedImageCache()
    cache.get(samples[0], 24)
    cache.get(samples[0], 32)
    assert cache.decoded == 2
    assert cache.path_for(samples[0].sha256, 24).is_file() and cache.path_for(samples[0].sha256, 32).is_file()
    assert cache.path_for(samples[0].sha256, 24).is_relative_to(paths.cache_dir("decoded"))


def test_keyed_by_content_not_by_path(tmp_path, samples):
    copy = tmp_path / "renamed.png"
    copy.write_bytes(samples[0].path.read_bytes())
    cache = DecodedImageCache()
    cache.get(samples[0], 24)
    cache.get(Sample(copy, "other", "val", samples[0].sha256), 24)
    assert cache.decoded == 1 and cache.hits == 1


def test_memory_budget_spills_to_disk(samples):
    one = 24 * 29 * 3  # bytes of one 48 x 40 picture at short side 24 (29 = 48 * 24 / 40, rounded)
    cache = DecodedImageCache(memory_budget_bytes=3 * one)
    cache.decode_all(samples, 24)
    assert cache.memory_items == 3 and cache.memory_bytes <= 3 * one
    assert cache.decoded == len(samples)
    cache.decode_all(samples, 24)  # most come back from disk, none is decoded again
    assert cache.decoded == len(samples)
    assert cache.disk_hits >= len(samples) - 3
    assert cache.memory_bytes <= 3 * one


def test_least_recently_used_leaves_memory_first(samples):
    one = 24 * 29 * 3
    cache = DecodedImageCache(memory_budget_bytes=2 * one)
    a, b, c = samples[:3]
    cache.get(a, 24)
    cache.get(b, 24)
    cache.get(a, 24)  # a is now the most recent
    cache.get(c, 24)  # evicts b
    memory_hits = cache.memory_hits
    cache.get(a, 24)
    assert cache.memory_hits == memory_hits + 1
    cache.get(b, 24)
    assert cache.disk_hits == 1


def test_damaged_disk_entry_is_decoded_again(samples):
    cache = DecodedImageCache()
    cache.get(samples[0], 24)
    cache.path_for(samples[0].sha256, 24).write_bytes(b"garbage")
    fresh = DecodedImageCache()
    array = fresh.get(samples[0], 24)
    assert fresh.decoded == 1 and array.shape[0] == 24
    assert DecodedImageCache().get(samples[0], 24).shape[0] == 24  # the entry was rewritten


def test_copies_are_decoded_once(tmp_path, samples):
    copies = [Sample(tmp_path / f"missing{i}.png", "a", "train", samples[0].sha256) for i in range(3)]
    cache = DecodedImageCache()
    arrays = cache.decode_all([samples[0], *copies, samples[1]], 24)
    assert cache.decoded == 2 and len(arrays) == 5
    assert all(a is arrays[0] for a in arrays[:4]) and arrays[4] is not arrays[0]


def test_progress_reports_every_picture(samples):
    calls = []
    DecodedImageCache().decode_all(samples, 16, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, len(samples)) and calls[-1] == (len(samples), len(samples))
    assert [done for done, _ in calls] == list(range(len(samples) + 1))


def test_unreadable_picture_raises_a_user_error(tmp_path):
    path = tmp_path / "gone.png"
    path.write_bytes(b"not a picture")
    with pytest.raises(ImageError):
        DecodedImageCache().get(Sample(path, "a", "train", "0" * 64), 24)


def test_second_process_decodes_nothing(tmp_path, transfer_home, write_class_folders):
    root = write_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    script = (
        "import json\n"
        "from transfer.data.dataset import load_dataset\n"
        "from transfer.data.cache import DecodedImageCache\n"
        f"dataset = load_dataset({str(root)!r})\n"
        "cache = DecodedImageCache()\n"
        "cache.decode_all(dataset.samples, 20)\n"
        "print(json.dumps({'decoded': cache.decoded, 'disk_hits': cache.disk_hits}))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True) for _ in range(2)]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first == {"decoded": 8, "disk_hits": 0}
    assert second == {"decoded": 0, "disk_hits": 8}
