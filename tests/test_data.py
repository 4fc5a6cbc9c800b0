"""transfer.data.dataset: layouts, the report, the split, hostile zips and folders, uploads, `transfer check`."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.cli import main as cli
from transfer.core import paths
from transfer.data.archives import ZipLimits, extract_zip, save_uploads
from transfer.data.dataset import check_dataset, demo_dataset_path, load_dataset
from transfer.data.report import CORRUPT_ENTRY, HIDDEN, LINK, MACOS_METADATA, RATIO, UNSAFE_PATH
from transfer.data.samples import DataError, Dataset
from transfer.data.splits import stratified_val_hashes
from transfer.data.images import EMPTY, NOT_AN_IMAGE, TOO_MANY_PIXELS, TRUNCATED


def make_picture(class_index: int, picture_index: int, size=(48, 40)) -> Image.Image:
    """Noise around a class colour, unique per (class, picture)."""
    rng = np.random.default_rng(7919 * class_index + picture_index)
    base = np.array([(200, 50, 50), (50, 160, 60), (50, 70, 210)][class_index % 3])
    pixels = base + rng.integers(-40, 41, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_bytes(class_index: int, picture_index: int, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    make_picture(class_index, picture_index, size).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(class_index: int, picture_index: int, size=(64, 48), **options) -> bytes:
    buffer = io.BytesIO()
    make_picture(class_index, picture_index, size).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def skipped_reasons(report) -> dict[str, str]:
    return {item.path: item.reason for item in report.skipped}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --------------------------------------------------------------------------- layouts


def test_folder_of_class_folders(tiny_dataset):
    report = check_dataset(tiny_dataset)
    assert report.ok, report.errors
    assert report.layout == "class_folders" and report.split == "automatic"
    assert report.classes == ["blue", "green", "red"]
    assert report.counts == {name: {"train": 8, "val": 2} for name in report.classes}
    assert report.modes == {"RGB": 30} and report.formats == {"PNG": 30}
    assert report.sizes["median_width"] == 48 and report.sizes["median_height"] == 40
    assert report.imbalance["ratio"] == 1.0
    assert not report.warnings and not report.skipped and not report.duplicates
    dataset = report.dataset
    assert len(dataset.train) == 24 and len(dataset.val) == 6
    assert dataset.label_index("green") == 1
    assert [len(group) for group in dataset.by_class("val").values()] == [2, 2, 2]
    assert list(dataset.by_class()) == ["blue", "green", "red"]
    assert all(sample.path.is_file() and len(sample.sha256) == 64 for sample in dataset.samples)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "test"])
def test_train_and_validation_folders(tmp_path, val_name, write_class_folders):
    write_class_folders(tmp_path / "data" / "train", {"cat": 6, "dog": 5})
    write_class_folders(tmp_path / "data" / val_name, {"cat": 2, "dog": 3}, size=(50, 50))
    report = check_dataset(tmp_path / "data")
    assert report.ok, report.errors
    assert report.layout == "split_folders" and report.split == "given"
    assert report.counts == {"cat": {"train": 6, "val": 2}, "dog": {"train": 5, "val": 3}}
    assert all(s.path.parent.parent.name == val_name for s in report.dataset.val)


def test_val_preferred_over_test_and_test_reported_unused(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "train", {"a": 3, "b": 3})
    write_class_folders(tmp_path / "val", {"a": 1, "b": 1})
    write_class_folders(tmp_path / "test", {"a": 1, "b": 1})
    report = check_dataset(tmp_path)
    assert report.counts == {"a": {"train": 3, "val": 1}, "b": {"train": 3, "val": 1}}
    assert any("test/" in warning for warning in report.warnings)


def test_train_folder_alone_gets_a_drawn_split(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "train", {"a": 5, "b": 5})
    report = check_dataset(tmp_path)
    assert report.ok and report.split == "automatic"
    assert report.counts == {"a": {"train": 4, "val": 1}, "b": {"train": 4, "val": 1}}


@pytest.mark.parametrize("enclosing", ["", "my_photos/", "outer/inner/"])
def test_zip_with_or_without_enclosing_folder(tmp_path, enclosing):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for class_index, name in enumerate(["cats", "dogs"]):
            for i in range(4):
                zf.writestr(f"{enclosing}{name}/{i}.png", png_bytes(class_index, i))
    report = check_dataset(archive)
    assert report.ok, report.errors
    assert report.classes == ["cats", "dogs"]
    assert Path(report.root).is_relative_to(paths.cache_dir("datasets"))
    # bytes of the same zip give the same report, extracted into the same content-keyed folder
    again = check_dataset(archive.read_bytes())
    assert again.root == report.root and again.counts == report.counts


def test_zip_of_split_folders_into_a_chosen_workdir(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for split, count in (("train", 4), ("val", 2)):
            for class_index, name in enumerate(["x", "y"]):
                for i in range(count):
                    zf.writestr(f"set/{split}/{name}/{split}{i}.png", png_bytes(class_index, i + (100 if split == "val" else 0)))
    report = check_dataset(archive.getvalue(), workdir=tmp_path / "work")
    assert report.ok and report.layout == "split_folders"
    assert report.counts == {"x": {"train": 4, "val": 2}, "y": {"train": 4, "val": 2}}
    assert Path(report.root) == tmp_path / "work" / "set"


def test_nested_folders_inside_a_class_are_read(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "d" / "a" / "more").mkdir()
    make_picture(0, 50).save(tmp_path / "d" / "a" / "more" / "deep.png")
    assert check_dataset(tmp_path / "d").counts["a"] == {"train": 2, "val": 1}


# --------------------------------------------------------------------------- blocking errors


def test_fewer_than_two_classes_blocks(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "one", {"only": 5})
    report = check_dataset(tmp_path / "one")
    assert not report.ok and report.dataset is None
    assert any("at least 2 classes" in error and "only" in error for error in report.errors)


def test_class_with_one_image_is_named(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "d", {"plenty": 5, "lonely": 1})
    report = check_dataset(tmp_path / "d")
    assert not report.ok
    assert any("lonely" in error and "add at least one more" in error for error in report.errors)
    assert not any("plenty" in error for error in report.errors)
    with pytest.raises(DataError, match="lonely"):
        load_dataset(tmp_path / "d")


def test_no_readable_image_blocks(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "d" / "readme.txt").write_text("hello")
    report = check_dataset(tmp_path / "d")
    assert not report.ok
    assert any("No readable picture" in error for error in report.errors)
    assert skipped_reasons(report) == {"a/x.jpg": NOT_AN_IMAGE, "readme.txt": NOT_AN_IMAGE}


def test_a_file_instead_of_data_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "photo.txt"
    path.write_text("nope")
    report = check_dataset(path)
    assert not report.ok and "neither a folder nor a .zip" in report.errors[0]
    assert not check_dataset(tmp_path / "missing").ok


def test_corrupt_zip_is_an_error(tmp_path):
    path = tmp_path / "broken.zip"
    data = bytearray(open(_write_zip(tmp_path / "ok.zip", {"a/1.png": png_bytes(0, 1)}), "rb").read())
    data[10:40] = b"\xff" * 30
    path.write_bytes(bytes(data))
    report = check_dataset(path)
    assert not report.ok


def test_bad_val_fraction_is_refused(tiny_dataset):
    with pytest.raises(DataError, match="between 0 and 1"):
        check_dataset(tiny_dataset, val_fraction=1.5)


# --------------------------------------------------------------------------- warnings


def test_duplicates_within_class_across_classes_and_leakage(tmp_path, write_class_folders):
    root = tmp_path / "d"
    write_class_folders(root / "train", {"a": 4, "b": 4})
    write_class_folders(root / "val", {"a": 2, "b": 2}, size=(50, 46))
    (root / "train" / "a" / "copy.png").write_bytes((root / "train" / "a" / "a_000.png").read_bytes())  # within class
    (root / "train" / "b" / "stolen.png").write_bytes((root / "train" / "a" / "a_001.png").read_bytes())  # two labels
    (root / "val" / "b" / "leak.png").write_bytes((root / "train" / "b" / "b_002.png").read_bytes())  # train/val leak
    report = check_dataset(root)
    assert report.ok  # duplicates warn, they do not block
    kinds = {group.kind: group for group in report.duplicates}
    assert set(kinds) == {"within_class", "conflicting_labels", "leakage"}
    assert sorted(kinds["within_class"].files) == ["train/a/a_000.png", "train/a/copy.png"]
    assert sorted(kinds["conflicting_labels"].labels) == ["a", "b"]
    assert sorted(kinds["leakage"].splits) == ["train", "val"]
    text = " ".join(report.warnings)
    assert "same class" in text and "two or more classes" in text and "validation accuracy will look better" in text


def test_drawn_split_keeps_copies_on_one_side(tmp_path, write_class_folders):
    root = write_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    for i in range(5):
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "a_000.png").read_bytes())
    report = check_dataset(root)
    copies = [s for s in report.dataset.samples if s.sha256 == report.dataset.samples[0].sha256]
    assert len(copies) == 6 and len({s.split for s in copies}) == 1
    assert not report.duplicates_of("leakage")


def test_imbalance_and_tiny_images_warn(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "d", {"big": 13, "small": 4})
    write_class_folders(tmp_path / "d", {"big": 0, "small": 0, "tiny": 3}, size=(20, 16))
    report = check_dataset(tmp_path / "d")
    assert report.ok
    assert report.imbalance == {"largest": "big", "largest_count": 13, "smallest": "tiny", "smallest_count": 3, "ratio": 4.33}
    assert report.sizes["small_images"] == 3 and report.sizes["min_width"] == 20
    assert any("imbalanced" in w and "tiny" in w for w in report.warnings)
    assert any("smaller than 32 pixels" in w for w in report.warnings)


def test_empty_class_folder_is_not_a_class(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "d" / "empty").mkdir()
    assert check_dataset(tmp_path / "d").classes == ["a", "b"]


# --------------------------------------------------------------------------- the split


def test_same_seed_same_split_other_seed_other_split(tmp_path, write_class_folders):
    root = write_class_folders(tmp_path / "d", {"a": 30, "b": 17, "c": 2})
    first = check_dataset(root, seed=3).dataset
    second = check_dataset(root, seed=3).dataset
    other = check_dataset(root, seed=4).dataset
    assert [(s.path, s.split) for s in first.samples] == [(s.path, s.split) for s in second.samples]
    assert {s.path for s in first.val} != {s.path for s in other.val}
    assert first.counts() == {"a": {"train": 24, "val": 6}, "b": {"train": 14, "val": 3}, "c": {"train": 1, "val": 1}}


def test_split_fraction_and_minimum_of_one(tmp_path, write_class_folders):
    root = write_class_folders(tmp_path / "d", {"a": 10, "b": 3})
    counts = check_dataset(root, val_fraction=0.5).counts
    assert counts == {"a": {"train": 5, "val": 5}, "b": {"train": 1, "val": 2}}
    counts = check_dataset(root, val_fraction=0.01).counts
    assert counts == {"a": {"train": 9, "val": 1}, "b": {"train": 2, "val": 1}}


def test_split_of_one_class_does_not_depend_on_the_others(tmp_path, write_class_folders):
    write_class_folders(tmp_path / "one", {"a": 20, "b": 5})
    write_class_folders(tmp_path / "two", {"a": 20, "b": 5, "c": 9})
    val_one = {s.sha256 for s in check_dataset(tmp_path / "one").dataset.val if s.label == "a"}
    val_two = {s.sha256 for s in check_dataset(tmp_path / "two").dataset.val if s.label == "a"}
    assert val_one == val_two


def test_stratified_val_hashes_edges():
    assert stratified_val_hashes([], 0.2, "s") == set()
    assert stratified_val_hashes(["x"], 0.2, "s") == set()
    assert len(stratified_val_hashes(["x", "y"], 0.9, "s")) == 1
    hashes = [f"{i:064x}" for i in range(100)]
    assert len(stratified_val_hashes(hashes, 0.2, "s")) == 20
    assert stratified_val_hashes(hashes, 0.2, "s") == stratified_val_hashes(list(reversed(hashes)), 0.2, "s")


def test_dataset_round_trips_through_json(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    restored = Dataset.from_dict(json.loads(json.dumps(dataset.to_dict())))
    assert restored.classes == dataset.classes
    assert restored.samples == dataset.samples
    assert restored.fingerprint() == dataset.fingerprint()
    assert all(not Path(item["path"]).is_absolute() for item in dataset.to_dict()["samples"])


# --------------------------------------------------------------------------- the hostile corpus


def _write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _add_raw(zf: zipfile.ZipFile, name: str, data: bytes, mode: int | None = None) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = mode << 16
    zf.writestr(info, data)


def _mode_files() -> dict[str, bytes]:
    """One picture per colour mode the issue lists, each a different colour."""

    def save(image, fmt, **options):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    palette = Image.new("P", (40, 40), 3)
    palette.putpalette(list(range(256)) * 3)
    return {
        "p.png": save(palette, "PNG"),
        "pa.tif": save(Image.new("PA", (40, 40), (5, 200)), "TIFF"),
        "rgba.png": save(Image.new("RGBA", (40, 40), (1, 2, 3, 100)), "PNG"),
        "la.png": save(Image.new("LA", (40, 40), (7, 80)), "PNG"),
        "l.png": save(Image.new("L", (40, 40), 9), "PNG"),
        "i16.png": save(Image.new("I;16", (40, 40), 3000), "PNG"),
        "i.tif": save(Image.new("I", (40, 40), 11), "TIFF"),
        "f.tif": save(Image.new("F", (40, 40), 0.3), "TIFF"),
        "cmyk.jpg": save(Image.new("CMYK", (40, 40), (10, 20, 30, 40)), "JPEG"),
        "ycbcr.tif": save(Image.new("YCbCr", (40, 40), (100, 110, 120)), "TIFF"),
    }


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (40, 40), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(1, 99, size=(80, 40), exif=exif.tobytes())


def build_hostile_zip(path: Path) -> Path:
    """Everything that can go wrong in one archive, next to two good classes."""
    truncated = jpeg_bytes(0, 500, size=(120, 90))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"photos/good/{i}.png", png_bytes(0, i))
        for name, data in _mode_files().items():
            zf.writestr(f"photos/modes/{name}", data)
        zf.writestr("photos/modes/animated.gif", _animated_gif())
        zf.writestr("photos/modes/rotated.jpg", _rotated_jpeg())
        zf.writestr("photos/good/truncated.jpg", truncated[: len(truncated) // 2])
        zf.writestr("photos/good/empty.png", b"")
        zf.writestr("photos/good/fake.jpg", b"<html>not a picture</html>")
        zf.writestr("photos/good/bomb.png", png_bytes(0, 0, size=(400, 400)))  # over the test's pixel cap
        zf.writestr("photos/good/notes.txt", b"my notes")
        zf.writestr("photos/good/.hidden.png", png_bytes(0, 77))
        zf.writestr("photos/.DS_Store", b"\x00\x00")
        zf.writestr("__MACOSX/photos/good/._0.png", b"\x00\x05\x16\x07")
        _add_raw(zf, "../escaped.png", png_bytes(0, 80))
        _add_raw(zf, "photos/good/../../../escaped2.png", png_bytes(0, 81))
        _add_raw(zf, "/tmp/absolute.png", png_bytes(0, 82))
        _add_raw(zf, "C:/windows/absolute.png", png_bytes(0, 83))
        _add_raw(zf, "photos/good/link.png", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
        _add_raw(zf, "photos/good/zeros.png", b"\x00" * (3 * 1024**2))  # 3 MiB of zeros: ratio ~1000:1
    return path


def test_hostile_zip_is_read_safely(tmp_path):
    archive = build_hostile_zip(tmp_path / "hostile.zip")
    workdir = tmp_path / "work"
    report = check_dataset(archive, workdir=workdir, max_pixels=100_000)

    # nothing written outside the chosen folder
    assert {name for name in files_under(tmp_path) if not name.startswith("work")} == {"hostile.zip"}
    assert not list(tmp_path.parent.glob("escaped*.png")) and not Path("/tmp/absolute.png").exists()
    assert not any(p.is_symlink() for p in workdir.rglob("*"))

    assert report.ok, report.errors
    assert report.classes == ["good", "modes"]
    reasons = skipped_reasons(report)
    assert reasons["photos/good/truncated.jpg"] == TRUNCATED
    assert reasons["photos/good/empty.png"] == EMPTY
    assert reasons["photos/good/fake.jpg"] == NOT_AN_IMAGE
    assert reasons["photos/good/bomb.png"] == TOO_MANY_PIXELS
    assert reasons["photos/good/notes.txt"] == NOT_AN_IMAGE
    assert reasons["photos/good/.hidden.png"] == HIDDEN
    assert reasons["photos/.DS_Store"] == HIDDEN
    assert reasons["__MACOSX/photos/good/._0.png"] == MACOS_METADATA
    assert reasons["../escaped.png"] == UNSAFE_PATH
    assert reasons["photos/good/../../../escaped2.png"] == UNSAFE_PATH
    assert reasons["/tmp/absolute.png"] == UNSAFE_PATH
    assert reasons["C:/windows/absolute.png"] == UNSAFE_PATH
    assert reasons["photos/good/link.png"] == LINK
    assert reasons["photos/good/zeros.png"] == RATIO

    # every mode, the animation and the rotated photo are usable pictures
    assert sum(report.counts["modes"].values()) == 12
    assert sum(report.counts["good"].values()) == 6
    for mode in ("P", "PA", "RGBA", "LA", "L", "I;16", "I", "F", "CMYK", "YCbCr", "RGB"):
        assert mode in report.modes, mode
    assert report.formats["GIF"] == 1 and report.formats["TIFF"] == 4
    rotated = next(s for s in report.dataset.samples if s.path.name == "rotated.jpg")
    assert rotated.label == "modes"
    assert any("left out" in w for w in report.warnings)


def test_hostile_zip_too_many_entries_is_refused(tmp_path):
    archive = build_hostile_zip(tmp_path / "hostile.zip")
    report = check_dataset(archive, workdir=tmp_path / "w", limits=ZipLimits(max_entries=10))
    assert not report.ok and "entries" in report.errors[0] and "limit" in report.errors[0]
    assert not any((tmp_path / "w").rglob("*.png"))


def test_zip_over_total_size_is_refused(tmp_path):
    archive = _write_zip(tmp_path / "big.zip", {f"a/{i}.png": png_bytes(0, i) for i in range(4)})
    with pytest.raises(DataError, match="size limit|GiB"):
        extract_zip(archive, tmp_path / "out", ZipLimits(max_total_bytes=2000))


def test_zip_header_that_understates_the_size_is_still_capped(tmp_path):
    """The total is counted from bytes actually inflated, not from the headers' claims."""
    archive = _write_zip(tmp_path / "z.zip", {f"a/{i}.png": png_bytes(0, i, size=(64, 64)) for i in range(6)})
    total = sum(info.file_size for info in zipfile.ZipFile(archive).infolist())
    with pytest.raises(DataError):
        extract_zip(archive, tmp_path / "out", ZipLimits(max_total_bytes=total - 1))
    extract_zip(archive, tmp_path / "ok", ZipLimits(max_total_bytes=total))
    assert len(list((tmp_path / "ok").rglob("*.png"))) == 6


def test_corrupt_entry_is_skipped_not_fatal(tmp_path):
    good = png_bytes(0, 1)
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/good.png", good)
        zf.writestr("a/bad.png", png_bytes(0, 2, size=(90, 90)))
    data = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo("a/bad.png")
    start = info.header_offset + 30 + len(info.filename) + 10
    data[start : start + 40] = b"\x13" * 40  # damage the compressed stream of one entry
    archive.write_bytes(bytes(data))
    out = extract_zip(archive, tmp_path / "out")
    assert (out / "a" / "good.png").read_bytes() == good
    log = json.loads((out / ".transfer-skipped.json").read_text())
    assert [(item["path"], item["reason"]) for item in log] == [("a/bad.png", CORRUPT_ENTRY)]
    assert not (out / "a" / "bad.png").exists()


def test_any_damage_to_a_compressed_entry_is_skipped_not_fatal(tmp_path):
    """Random damage makes zlib, CRC and size errors alike; each must end as a reported skip."""
    repetitive = b"".join(bytes([i % 7, i % 13, i % 29]) for i in range(20000))  # deflates well
    archive = _write_zip(tmp_path / "z.zip", {"a/x.bmp": repetitive, "a/y.png": png_bytes(0, 4)})
    info = zipfile.ZipFile(archive).getinfo("a/x.bmp")
    start = info.header_offset + 30 + len(info.filename)
    rng = np.random.default_rng(0)
    details = []
    for attempt in range(12):
        data = bytearray(archive.read_bytes())
        for position in rng.integers(start, start + info.compress_size, size=3):
            data[position] = int(rng.integers(0, 256))
        damaged = tmp_path / f"d{attempt}.zip"
        damaged.write_bytes(bytes(data))
        out = extract_zip(damaged, tmp_path / f"out{attempt}")
        log = json.loads((out / ".transfer-skipped.json").read_text())
        assert [(item["path"], item["reason"]) for item in log] == [("a/x.bmp", CORRUPT_ENTRY)]
        assert (out / "a" / "y.png").is_file() and not (out / "a" / "x.bmp").exists()
        details.append(log[0]["detail"])
    assert any("decompressing" in d for d in details) and any("CRC" in d or "Bad" in d for d in details), details


def test_hostile_folder_is_read_safely(tmp_path, write_class_folders):
    root = write_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "truncated.jpg").write_bytes(jpeg_bytes(0, 9, size=(100, 100))[:300])
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / ".DS_Store").write_bytes(b"\x00")
    (root / "a" / "Thumbs.db").write_bytes(b"\x00")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._a").write_bytes(b"\x00")
    (root / "b" / ".cache").mkdir()
    (root / "b" / ".cache" / "x.png").write_bytes(png_bytes(1, 50))
    (root / "loose.png").write_bytes(png_bytes(1, 60))
    report = check_dataset(root)
    assert report.ok and report.classes == ["a", "b"]
    reasons = skipped_reasons(report)
    assert reasons == {
        "a/truncated.jpg": TRUNCATED,
        "a/empty.png": EMPTY,
        "a/.DS_Store": HIDDEN,
        "a/Thumbs.db": NOT_AN_IMAGE,
        "b/.cache/": HIDDEN,
        "__MACOSX/": MACOS_METADATA,
        "loose.png": "not in a class folder",
    }


# --------------------------------------------------------------------------- uploads


def test_save_uploads_writes_class_folders_safely(tmp_path):
    target = tmp_path / "session" / "uploads"
    uploads = {
        "cats": [("../../evil.png", png_bytes(0, 1)), ("a/b/c.png", png_bytes(0, 2)), ("c.png", png_bytes(0, 3))],
        "dogs/../../x": [(".hidden.png", png_bytes(1, 1)), ("webcam", jpeg_bytes(1, 2)), ("bad.jpg", b"nope")],
    }
    folder = save_uploads(uploads, target)
    assert folder == target
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert written == [
        "session/uploads/cats/c.png",
        "session/uploads/cats/c_1.png",
        "session/uploads/cats/evil.png",
        "session/uploads/x/hidden.png",
        "session/uploads/x/webcam.jpg",
    ]
    report = check_dataset(folder)
    assert report.ok, report.errors
    assert report.classes == ["cats", "x"]
    assert skipped_reasons(report) == {"x/bad.jpg": NOT_AN_IMAGE}


def test_save_uploads_adds_to_an_existing_folder(tmp_path):
    save_uploads({"a": [("1.png", png_bytes(0, 1))], "b": [("1.png", png_bytes(1, 1))]}, tmp_path / "u")
    save_uploads({"a": [("1.png", png_bytes(0, 2))]}, tmp_path / "u")
    assert sorted(p.name for p in (tmp_path / "u" / "a").iterdir()) == ["1.png", "1_1.png"]


def test_save_uploads_refuses_names_that_collide_or_vanish(tmp_path):
    with pytest.raises(DataError, match="same name"):
        save_uploads({"Cat": [], "cat": []}, tmp_path / "u")
    with pytest.raises(DataError, match="no usable characters"):
        save_uploads({"...": [("1.png", png_bytes(0, 1))]}, tmp_path / "v")


# --------------------------------------------------------------------------- demo data and hymenoptera


def test_demo_dataset_is_usable():
    root = demo_dataset_path()
    assert root.is_dir(), "the demo data set ships with the package"
    report = check_dataset(root)
    assert report.ok, report.errors
    assert len(report.classes) >= 3
    assert all(sum(row.values()) >= 30 for row in report.counts.values())
    assert [item.path for item in report.skipped] == ["README.md"]
    assert not report.duplicates and not report.warnings
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 5 * 1024**2
    assert (root / "README.md").is_file()


def test_hymenoptera_report(hymenoptera):
    report = check_dataset(hymenoptera)
    assert report.ok, report.errors
    assert report.layout == "split_folders"
    assert report.counts == {"ants": {"train": 124, "val": 70}, "bees": {"train": 121, "val": 83}}
    assert report.formats == {"JPEG": 397, "GIF": 1}
    assert any(s.path.suffix == ".jpeg" for s in report.dataset.samples)
    assert any(s.path.suffix == ".gif" for s in report.dataset.samples)


# --------------------------------------------------------------------------- transfer check


def _run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out


def test_cli_check_json_on_good_data(tiny_dataset, capsys):
    code, out = _run_cli(["check", str(tiny_dataset), "--json", "--val-fraction", "0.3", "--seed", "5"], capsys)
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] is True and report["classes"] == ["blue", "green", "red"]
    assert report["counts"]["red"] == {"train": 7, "val": 3}
    assert report["seed"] == 5 and len(report["dataset"]["samples"]) == 30


def test_cli_check_hostile_zip_without_traceback(tmp_path, capsys):
    archive = build_hostile_zip(tmp_path / "hostile.zip")
    code, out = _run_cli(["check", str(archive)], capsys)
    assert code == 0  # problems are skipped and reported; two good classes remain
    assert "truncated" in out and "unsafe path" in out and "link" in out and "Traceback" not in out
    code, out = _run_cli(["check", str(archive), "--json"], capsys)
    report = json.loads(out.strip().splitlines()[-1])
    assert {s["reason"] for s in report["skipped"]} >= {TRUNCATED, EMPTY, NOT_AN_IMAGE, UNSAFE_PATH, LINK, RATIO, HIDDEN}


def test_cli_check_blocking_errors_exit_2(tmp_path, capsys, write_class_folders):
    write_class_folders(tmp_path / "d", {"only": 3})
    code, out = _run_cli(["check", str(tmp_path / "d")], capsys)
    assert code == 2 and "at least 2 classes" in out and "not ready" in out
    code, out = _run_cli(["check", str(tmp_path / "d"), "--json"], capsys)
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 2 and report["ok"] is False and report["errors"]


def test_cli_check_hymenoptera_table(hymenoptera, capsys):
    code, out = _run_cli(["check", str(hymenoptera)], capsys)
    assert code == 0
    assert any(line.split()[:4] == ["ants", "124", "70", "194"] for line in out.splitlines())
    assert any(line.split()[:4] == ["total", "245", "153", "398"] for line in out.splitlines())
