"""Per-session upload storage: zips and folders unpacked once and safely, hand-built classes."""

from __future__ import annotations

import io
import zipfile

import pytest

from transfer.data import uploads
from transfer.data.dataset import check_dataset
from transfer.data.samples import DataError


def test_a_zip_is_unpacked_once_per_content(tmp_path, png):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/1.png", png(0, 1))
        archive.writestr("b/1.png", png(1, 1))
    first = uploads.unpack_zip_upload(buffer.getvalue(), tmp_path)
    marker = first / "a" / "1.png"
    stamp = marker.stat().st_mtime_ns
    again = uploads.unpack_zip_upload(buffer.getvalue(), tmp_path)
    assert again == first and marker.stat().st_mtime_ns == stamp
    assert first.is_relative_to(tmp_path / "zips")
    assert not [p for p in (tmp_path / "zips").iterdir() if p.name.startswith(".")], "no staging folder is left"


def test_a_broken_zip_raises_a_sentence_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        uploads.unpack_zip_upload(b"not a zip", tmp_path)
    assert not any((tmp_path / "zips").iterdir())


def test_folder_upload_keeps_class_folders_and_drops_climbing_names(tmp_path, png):
    files = [("shots/cat/1.png", png(0, 1)), ("shots/dog/1.png", png(1, 1)), ("shots/../../up.png", png(0, 2))]
    folder = uploads.unpack_folder_upload(files, tmp_path / "uploads")
    report = check_dataset(folder)
    assert report.classes == ["cat", "dog"]
    assert [s.reason for s in report.skipped] == ["unsafe path"]
    assert not list(tmp_path.rglob("up.png"))
    assert uploads.uploaded_folder_name([name for name, _ in files]) == "shots"
    with pytest.raises(DataError, match="empty"):
        uploads.unpack_folder_upload([], tmp_path)


def test_builder_adds_renames_and_removes_classes_and_pictures(tmp_path, png):
    folder = uploads.builder_folder(tmp_path)
    assert uploads.add_class(folder, "  ../cat ") == "cat"  # separators and leading dots are cleaned
    uploads.add_class(folder, "dog")
    added, skipped = uploads.add_pictures(folder, "cat", [("x.png", png(0, 1)), ("y.png", png(0, 2)), ("z.png", b"oops")])
    assert added == 2 and [s.reason for s in skipped] == ["not an image"]
    assert [p.name for p in uploads.builder_classes(folder)["cat"]] == ["x.png", "y.png"]
    assert uploads.rename_class(folder, "cat", "kitten") == "kitten"
    assert list(uploads.builder_classes(folder)) == ["dog", "kitten"]
    with pytest.raises(DataError, match="already a class"):
        uploads.rename_class(folder, "dog", "Kitten")
    with pytest.raises(DataError, match="reserved"):
        uploads.add_class(folder, "train")
    with pytest.raises(DataError, match="not a picture of the class"):
        uploads.remove_picture(folder, "kitten", "../dog")
    with pytest.raises(DataError, match="no class called"):
        uploads.add_pictures(folder, "../kitten", [("a.png", png(0, 3))])
    uploads.remove_picture(folder, "kitten", "x.png")
    assert [p.name for p in uploads.builder_classes(folder)["kitten"]] == ["y.png"]
    uploads.remove_class(folder, "dog")
    assert list(uploads.builder_classes(folder)) == ["kitten"]


def test_content_signature_changes_when_a_picture_is_added(tmp_path, png):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(png(0, 1))
    before = uploads.content_signature(tmp_path)
    assert uploads.content_signature(tmp_path) == before
    (tmp_path / "a" / "2.png").write_bytes(png(0, 2))
    assert uploads.content_signature(tmp_path) != before
