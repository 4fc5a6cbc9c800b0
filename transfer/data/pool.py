"""Pools: pictures without labels, kept until someone says what they show.

A pool is a folder of pictures in any layout (folders inside are only for the user's own
order; they are not classes). In the web app a session's pools live under its uploads folder,
``uploads/pools/<hash>/``, unpacked from a zip, a folder or dropped pictures with exactly the
safety rules, limits and quota of labelled uploads (:mod:`transfer.data.uploads`). On the command
line a pool is any folder or ``.zip``.

:func:`pool_pictures` lists a pool's readable pictures with their SHA-256 (the key of every
cache), skipping hidden files and files that are not pictures; the listing is remembered per
content in the cache, so listing a pool of 1,000 pictures again reads no picture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transfer.core import paths
from transfer.data.archives import COMPLETE_MARKER, ZipLimits, extract_zip
from transfer.data.samples import Sample
from transfer.core.errors import TransferError
from transfer.data.images import IMAGE_EXTENSIONS, ImageError, inspect_image
from transfer.core.quota import DiskQuota, folder_bytes
from transfer.core.files import atomic_write_json, read_json
from transfer.data.uploads import (
    UPLOAD_INFO,
    content_signature,
    unpack_folder_upload,
    unpack_zip_upload,
)

POOL_FOLDER = "pools"
POOL_SPLIT = "pool"  # the split of a pool picture: neither training nor validation
MAX_POOL_PICTURES = 20_000


class PoolError(TransferError):
    """The pool cannot be used; the message says what to do."""


@dataclass
class PoolPicture:
    """One unlabelled picture: where it is, its name inside the pool, its content hash."""

    path: Path
    name: str  # relative to the pool, with "/" separators
    sha256: str

    def as_sample(self) -> Sample:
        return Sample(self.path, "", POOL_SPLIT, self.sha256)


# --------------------------------------------------------------------------- a session's pools


def add_zip_pool(data: bytes, uploads: Path, *, quota: DiskQuota | None = None, name: str = "") -> Path:
    """Unpack a zip of unlabelled pictures into this session's pools; returns the pool's folder."""
    return unpack_zip_upload(data, uploads, quota=quota, name=name or "a zip file", kind=POOL_FOLDER)


def add_files_pool(files: list[tuple[str, bytes]], uploads: Path, *, quota: DiskQuota | None = None,
                   name: str = "") -> Path:
    """Keep uploaded pictures (a folder or loose files, ``(relative path, bytes)``) as a pool."""
    if not files:
        raise PoolError("No picture was given; drop pictures, a folder or a zip of them.")
    return unpack_folder_upload(files, uploads, quota=quota, kind=POOL_FOLDER, name=name)


@dataclass
class Pool:
    id: str  # the folder name under uploads/pools
    name: str
    path: Path
    bytes: int
    created_at: float


def list_pools(uploads: Path) -> list[Pool]:
    """This session's complete pools, newest first."""
    parent = Path(uploads) / POOL_FOLDER
    found = []
    for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
        if folder.name.startswith(".") or not (folder / COMPLETE_MARKER).exists():
            continue
        info = read_json(folder / UPLOAD_INFO, default={}) or {}
        created = float(info.get("created_at") or (folder / COMPLETE_MARKER).stat().st_mtime)
        found.append(Pool(folder.name, str(info.get("name") or folder.name), folder, folder_bytes(folder), created))
    return sorted(found, key=lambda pool: pool.created_at, reverse=True)


def find_pool(uploads: Path, pool_id: str) -> Pool:
    """The pool called ``pool_id``; only ids :func:`list_pools` hands out are accepted."""
    for pool in list_pools(uploads):
        if pool.id == pool_id:
            return pool
    raise PoolError("That pool is not in this session any more; it may have been deleted in another tab.")


def delete_pool(uploads: Path, pool_id: str) -> None:
    """Delete a pool (pictures already labelled stay in the data set: they were copied)."""
    shutil.rmtree(find_pool(uploads, pool_id).path)


# --------------------------------------------------------------------------- the pictures


def open_pool(source: Path | str, workdir: Path | None = None) -> Path:
    """The folder of a pool given as a folder or a ``.zip`` (unpacked safely into the cache)."""
    source = Path(source)
    if source.is_dir():
        return source
    if source.is_file() and source.suffix.lower() == ".zip":
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:20]
        target = Path(workdir) if workdir else paths.cache_dir("pools") / f"zip-{digest}"
        if not (target / COMPLETE_MARKER).exists():
            extract_zip(source, target, ZipLimits())
            (target / COMPLETE_MARKER).touch()
        return target
    raise PoolError(f"{source} is neither a folder nor a .zip file; give the folder that holds the pictures.")


def pool_pictures(folder: Path | str, limit: int = MAX_POOL_PICTURES) -> list[PoolPicture]:
    """The readable pictures in ``folder`` (every sub-folder too), sorted by name.

    Hidden files, ``__MACOSX`` and files that are not pictures are left out; each picture's
    header is read once (pixel cap, format), and the list is remembered per folder content.
    """
    folder = Path(folder).resolve()
    signature = content_signature(folder)
    memo = paths.cache_dir("pools") / f"list-{hashlib.sha256(str(folder).encode()).hexdigest()[:20]}.json"
    remembered = read_json(memo, None)
    if isinstance(remembered, dict) and remembered.get("signature") == signature:
        return [PoolPicture(folder / name, name, sha) for name, sha in remembered["pictures"]]
    pictures = []
    for path in _picture_files(folder):
        if len(pictures) >= limit:
            raise PoolError(f"A pool holds at most {limit:,} pictures; split this one into smaller pools.")
        try:
            data = path.read_bytes()
            inspect_image(data)
        except (ImageError, OSError):
            continue  # an unreadable picture cannot be labelled; it is simply not suggested
        pictures.append(PoolPicture(path, path.relative_to(folder).as_posix(), hashlib.sha256(data).hexdigest()))
    atomic_write_json(memo, {"signature": signature, "pictures": [[p.name, p.sha256] for p in pictures]})
    return pictures


def _picture_files(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(folder):  # does not follow folder links
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            path = Path(directory) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_symlink():
                found.append(path)
    return found
