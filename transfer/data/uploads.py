"""Keep what one person uploads in a folder of their own: zips, folders and hand-built classes.

The web app gives each browser session an ``uploads`` folder; everything here writes only
inside the folder it is given. A zip or an uploaded folder is unpacked once per content into
``zips/<hash>/`` or ``folders/<hash>/`` with the safety rules of :func:`transfer.data.archives.extract_zip`.
Classes built picture by picture (upload or webcam) live as class folders under ``classes/``,
so the same :func:`transfer.data.dataset.check_dataset` reads every kind of source.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transfer.data.archives import (
    COMPLETE_MARKER,
    INGEST_LOG,
    ZipLimits,
    _clean_name,
    disk_errors_as_sentences,
    extract_zip,
    read_ingest_log,
    save_uploads,
)
from transfer.data.discovery import VAL_FOLDER_NAMES
from transfer.data.report import Skipped
from transfer.data.samples import DataError
from transfer.data.images import IMAGE_EXTENSIONS
from transfer.core.quota import DiskQuota, folder_bytes
from transfer.core.files import atomic_write_json, file_lock, read_json

BUILDER_FOLDER = "classes"
ZIP_FOLDER, DIRECTORY_FOLDER = "zips", "folders"
#: Hidden file in an unpacked upload: what the user called it and when it came.
UPLOAD_INFO = ".upload.json"
QUOTA_LOCK_FILE = ".quota.lock"
_RESERVED_CLASS_NAMES = frozenset({"train", *VAL_FOLDER_NAMES, "__macosx"})


# --------------------------------------------------------------------------- zips and folders


def unpack_zip_upload(data: bytes, uploads: Path, limits: ZipLimits = ZipLimits(), *,
                      quota: DiskQuota | None = None, name: str = "", kind: str = ZIP_FOLDER) -> Path:
    """Unpack an uploaded zip under ``uploads/zips/`` (or ``uploads/<kind>/``, once per content)
    and return the folder.

    Raises a :class:`~transfer.core.errors.TransferError` with a sentence for an unreadable archive,
    one over ``limits`` or ``quota``, or a full disk; then nothing of it is kept.
    """
    key = hashlib.sha256(data).hexdigest()[:20]
    return _unpack_once(data, Path(uploads) / kind / key, limits, quota, name or "a zip file")


def unpack_folder_upload(files: list[tuple[str, bytes]], uploads: Path, limits: ZipLimits = ZipLimits(), *,
                         quota: DiskQuota | None = None, kind: str = DIRECTORY_FOLDER, name: str = "") -> Path:
    """Rebuild an uploaded folder from ``(relative path, bytes)`` pairs and return where it is.

    Browsers name each file of a folder upload by its path inside the chosen folder
    (``pets/cats/tom.jpg``). Those names come from the user's machine, so they get exactly
    the treatment a zip's entry names get: the files are packed into an uncompressed
    in-memory archive and unpacked with the same rules (no absolute paths, no ``..``, hidden
    files, ``__MACOSX`` and non-pictures skipped and listed).
    """
    if not files:
        raise DataError("The folder is empty; choose a folder that holds one sub-folder per class.")
    digest = hashlib.sha256()
    for file_name, data in sorted(files, key=lambda item: item[0]):
        digest.update(f"{file_name}\0{hashlib.sha256(data).hexdigest()}\0".encode("utf-8", "replace"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for file_name, data in files:
            archive.writestr(file_name.replace("\\", "/"), data)
    final = Path(uploads) / kind / digest.hexdigest()[:20]
    return _unpack_once(buffer.getvalue(), final, limits, quota,
                        name or uploaded_folder_name([file_name for file_name, _ in files]))


def uploaded_folder_name(file_names: list[str]) -> str:
    """The name of the folder the user picked, read from the files' relative paths."""
    tops = {name.replace("\\", "/").lstrip("/").split("/", 1)[0] for name in file_names if "/" in name.replace("\\", "/")}
    return _clean_name(tops.pop()) if len(tops) == 1 else "uploaded folder"


def _unpack_once(archive: bytes, final: Path, limits: ZipLimits, quota: DiskQuota | None, name: str) -> Path:
    """Extract into a hidden staging folder, then rename: a half-done unpack is never used.

    The completion marker is written last, inside the staging folder, so a folder without it
    (a crash, a full disk) is never taken as an upload; it is replaced on the next try.
    """
    if (final / COMPLETE_MARKER).exists():
        return final
    # One unpack at a time per session, so two tabs cannot both spend the same free quota.
    with _quota_lock(quota), disk_errors_as_sentences("the upload"):
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            extract_zip(archive, staging, limits, quota)
            atomic_write_json(staging / UPLOAD_INFO, {"name": name, "created_at": time.time()})
            (staging / COMPLETE_MARKER).touch()
            shutil.rmtree(final, ignore_errors=True)  # an earlier unpack that never completed
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _quota_lock(quota: DiskQuota | None):
    if quota is None:
        return contextlib.nullcontext()
    Path(quota.root).mkdir(parents=True, exist_ok=True)
    return file_lock(Path(quota.root) / QUOTA_LOCK_FILE)


# --------------------------------------------------------------------------- listing and deleting


@dataclass
class Upload:
    """One thing this session uploaded: a zip, a folder, or the classes built by hand."""

    id: str  # "zips/<hash>", "folders/<hash>" or "classes": the folder under the uploads folder
    name: str
    path: Path
    bytes: int
    created_at: float


def list_uploads(uploads: Path) -> list[Upload]:
    """The complete uploads under ``uploads``, newest first (half-done unpacks are not listed)."""
    uploads = Path(uploads)
    found = []
    for kind in (ZIP_FOLDER, DIRECTORY_FOLDER):
        parent = uploads / kind
        for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
            if folder.name.startswith(".") or not (folder / COMPLETE_MARKER).exists():
                continue
            info = read_json(folder / UPLOAD_INFO, default={}) or {}
            created = info.get("created_at") or (folder / COMPLETE_MARKER).stat().st_mtime
            found.append(Upload(f"{kind}/{folder.name}", str(info.get("name") or folder.name), folder,
                                folder_bytes(folder), float(created)))
    builder = uploads / BUILDER_FOLDER
    if builder.is_dir() and any(builder_classes(builder)):
        found.append(Upload(BUILDER_FOLDER, "the classes built picture by picture", builder,
                            folder_bytes(builder), builder.stat().st_mtime))
    return sorted(found, key=lambda u: u.created_at, reverse=True)


def find_upload(uploads: Path, upload_id: str) -> Upload:
    """The upload called ``upload_id``; only ids that :func:`list_uploads` hands out are accepted."""
    for upload in list_uploads(uploads):
        if upload.id == upload_id:
            return upload
    raise DataError(f"There is no upload {upload_id!r} in this session; it may have been deleted in another tab.")


def upload_holds(upload: Upload, source: Path | str) -> bool:
    """Whether ``source`` (a data set folder) lies inside ``upload``."""
    try:
        return Path(source).resolve().is_relative_to(upload.path.resolve())
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- classes built by hand


def builder_folder(uploads: Path) -> Path:
    """Where the classes built picture by picture live (created on first use)."""
    folder = Path(uploads) / BUILDER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def builder_classes(folder: Path) -> dict[str, list[Path]]:
    """Each hand-built class and its pictures: classes by name (the label order training uses), pictures as added."""
    folder = Path(folder)
    classes = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
    classes.sort(key=lambda p: p.name)
    return {path.name: _pictures_in(path) for path in classes}


def _pictures_in(folder: Path) -> list[Path]:
    pictures = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(pictures, key=lambda p: (p.stat().st_mtime_ns, p.name))


def add_class(folder: Path, name: str) -> str:
    """Create an empty class and return its name as stored (cleaned of unsafe characters)."""
    clean = _valid_class_name(name)
    existing = {n.lower() for n in builder_classes(folder)}
    if clean.lower() in existing:
        raise DataError(f"There is already a class called {clean}; give the new class another name.")
    (Path(folder) / clean).mkdir(parents=True)
    return clean


def rename_class(folder: Path, old: str, new: str) -> str:
    """Rename a class; its pictures move with it. Returns the new name as stored."""
    source = _class_path(folder, old)
    clean = _valid_class_name(new)
    if clean == source.name:
        return clean
    others = {n.lower() for n in builder_classes(folder) if n != source.name}
    if clean.lower() in others:
        raise DataError(f"There is already a class called {clean}; pick a name no other class uses.")
    source.rename(source.with_name(clean))
    return clean


def remove_class(folder: Path, name: str) -> None:
    """Delete a class and all its pictures."""
    shutil.rmtree(_class_path(folder, name))


def add_pictures(folder: Path, name: str, files: list[tuple[str, bytes]],
                 quota: DiskQuota | None = None) -> tuple[int, list[Skipped]]:
    """Add uploaded or photographed pictures to a class.

    Returns how many were added and the files left out (not a picture, unreadable, too
    large), each with its reason, so the page can say so at once. Pictures over ``quota``
    are refused, all of them, before any is written.
    """
    class_path = _class_path(folder, name)
    before = len(_pictures_in(class_path))
    save_uploads({class_path.name: files}, Path(folder), quota)
    # The builder's own report should describe what is in the classes now, not every file
    # ever refused, so the refusals are handed back here and the log is cleared.
    skipped = read_ingest_log(Path(folder))
    (Path(folder) / INGEST_LOG).unlink(missing_ok=True)
    return len(_pictures_in(class_path)) - before, skipped


def remove_picture(folder: Path, name: str, file_name: str) -> None:
    """Delete one picture of a class; a name that points anywhere else is refused."""
    class_path = _class_path(folder, name)
    picture = class_path / file_name
    if os.path.basename(file_name) != file_name or picture.resolve().parent != class_path.resolve():
        raise DataError(f"{file_name!r} is not a picture of the class {name}.")
    picture.unlink(missing_ok=True)


def _valid_class_name(name: str) -> str:
    clean = _clean_name(name or "")
    if not clean:
        raise DataError("Give the class a name made of letters or digits, for example 'cat' or 'scratch'.")
    if clean.lower() in _RESERVED_CLASS_NAMES:
        raise DataError(
            f"'{clean}' is reserved for the training and validation folders of a data set; "
            "give the class another name."
        )
    return clean


def _class_path(folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if os.path.basename(name) != name or name.startswith(".") or not path.is_dir():
        raise DataError(f"There is no class called {name!r}; it may have been removed in another tab.")
    return path


# --------------------------------------------------------------------------- change detection


def content_signature(source: Path | str) -> str:
    """A cheap hash of a folder's file names, sizes and modification times (or a file's).

    Equal signatures mean nothing was added, removed or rewritten, so a report computed
    before can be shown again without reading a single picture.
    """
    source = Path(source)
    digest = hashlib.sha256()
    if source.is_file():
        stat = source.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]
    for directory, subdirs, files in os.walk(source):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            relative = os.path.relpath(path, source)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "replace"))
    return digest.hexdigest()[:16]
