"""Pictures in, safely: zips extracted under caps (:class:`ZipLimits`) that keep a hostile archive
from writing outside its folder or filling the disk, and pictures uploaded per class written as
class folders. Every file left out is listed in a hidden log the data report reads."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from transfer.core import paths
from transfer.core.errors import TransferError
from transfer.core.quota import (
    DiskFull,
    DiskQuota,
    QuotaExceeded,
    check_free_space,
    disk_full_message,
    human_size,
    is_disk_full,
)
from transfer.core.files import atomic_write_bytes, atomic_write_json
from transfer.data.images import (
    IMAGE_EXTENSIONS,
    NOT_AN_IMAGE,
    ImageError,
    ImageInfo,
    inspect_image,
)
from transfer.data.report import (
    CORRUPT_ENTRY,
    DUPLICATE_NAME,
    ENCRYPTED,
    HIDDEN,
    LINK,
    MACOS_METADATA,
    PATH_CLASH,
    RATIO,
    TOO_LONG,
    UNSAFE_PATH,
    UNWRITABLE,
    Skipped,
)
from transfer.data.samples import DataError

#: Hidden file in a prepared folder listing what was left out while preparing it.
INGEST_LOG = ".transfer-skipped.json"


#: Present in an unpacked folder once every file is written: a folder without it is never used.
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class ZipLimits:
    """Caps that keep a hostile archive from filling the disk or memory.

    Real pictures are already compressed, so they shrink little in a zip; a zip bomb shrinks
    a thousandfold. So the ratio is checked on every entry (an entry over ``max_ratio`` is
    skipped and reported) and on the archive as a whole (declared size of everything inside
    over the archive's own size, above ``max_archive_ratio`` the archive is refused before
    anything is written). Over ``max_entries`` entries or ``max_total_bytes`` to write, the
    archive is refused too. Paths longer than ``max_path_bytes``, names longer than
    ``max_name_bytes`` and folders deeper than ``max_depth`` are skipped with a reason.
    """

    max_entries: int = 50_000
    max_total_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0
    max_archive_ratio: float = 100.0
    max_path_bytes: int = 1024
    max_name_bytes: int = 200
    max_depth: int = 32


def extract_zip(
    path_or_bytes: Path | str | bytes, target: Path, limits: ZipLimits = ZipLimits(), quota: DiskQuota | None = None
) -> Path:
    """Extract the pictures of a zip into ``target`` safely and return ``target``.

    Entries with absolute paths, ``..``, links, paths that clash with another entry (a file
    where a folder must go, or the reverse) or over-long paths are not extracted;
    ``__MACOSX``, hidden files and non-images are skipped; every skip is listed in a hidden
    log file the data report reads. Raises :class:`DataError` when the archive is unreadable
    or over ``limits``, :class:`~transfer.core.quota.QuotaExceeded` when it does not fit in
    ``quota``, :class:`~transfer.core.quota.DiskFull` when the disk fills up; in those cases the
    files this call wrote are removed again.
    """
    target = Path(target)
    skipped: list[Skipped] = []
    written: list[Path] = []
    try:
        with disk_errors_as_sentences("the archive"), _open_zip(path_or_bytes) as archive:
            entries = archive.infolist()
            _check_zip_totals(entries, limits, _archive_size(path_or_bytes))
            plan = _plan_entries(entries, skipped, limits)
            target.mkdir(parents=True, exist_ok=True)
            budget = _byte_budget(sum(entry.file_size for entry, _ in plan), target, limits, quota)
            for entry, relative in plan:
                destination = _extract_entry(archive, entry, target, relative, budget, skipped)
                if destination is not None:
                    written.append(destination)
            _write_ingest_log(target, skipped)
    except TransferError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return target


def save_uploads(classes: dict[str, list[tuple[str, bytes]]], target: Path, quota: DiskQuota | None = None) -> Path:
    """Write pictures uploaded per class as a folder of class folders under ``target``.

    Class and file names are cleaned (no separators, no leading dots), clashes get a number,
    and files that are not readable pictures are left out and listed for the data report.
    Uploads over ``quota`` are refused before anything is written; each picture is written
    whole or not at all, so a full disk keeps every picture saved before it.
    """
    target = Path(target)
    names = {label: _clean_name(label) for label in classes}
    if len(set(n.lower() for n in names.values() if n)) < len([n for n in names.values() if n]):
        raise DataError("Two classes have the same name once cleaned up; give every class a distinct name.")
    empty = [label for label, name in names.items() if not name]
    if empty:
        raise DataError(f"The class name {empty[0]!r} has no usable characters; use letters or digits.")
    needed = sum(len(data) for files in classes.values() for _, data in files)
    if quota is not None:
        quota.check(needed)
    with disk_errors_as_sentences("the pictures"):
        target.mkdir(parents=True, exist_ok=True)
        check_free_space(target, needed, "the pictures")
        skipped = read_ingest_log(target)
        written: list[Path] = []
        try:
            for label, files in classes.items():
                folder = target / names[label]
                folder.mkdir(exist_ok=True)
                for file_name, data in files:
                    written.append(_save_upload(folder, file_name, data, skipped))
        except OSError:
            # All of this upload or none of it; pictures saved by earlier uploads stay.
            for path in filter(None, written):
                path.unlink(missing_ok=True)
            raise
        _write_ingest_log(target, skipped)
    return target


def describe_source(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<zip, {len(source):,} bytes>"
    return str(source)


def prepare_folder(source, workdir: Path | None, limits: ZipLimits) -> Path:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _extract_cached(bytes(source), workdir, limits)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist; give a folder of class folders or a .zip file.")
    if path.is_dir():
        return path
    if zipfile.is_zipfile(path):
        return _extract_cached(path, workdir, limits)
    raise DataError(f"{path} is neither a folder nor a .zip file; give a folder of class folders or a .zip of one.")


def _extract_cached(source: Path | bytes, workdir: Path | None, limits: ZipLimits) -> Path:
    """Extract once per archive content: a finished extraction is marked and reused."""
    if workdir is not None:
        return extract_zip(source, Path(workdir), limits)
    key = _hash_zip(source)
    final = paths.cache_dir("datasets") / key
    if (final / COMPLETE_MARKER).exists():
        return final
    with disk_errors_as_sentences("the archive"):
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            extract_zip(source, staging, limits)
            (staging / COMPLETE_MARKER).touch()
            try:
                staging.rename(final)
            except OSError as error:  # another process finished the same archive first: use theirs
                if is_disk_full(error):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _hash_zip(source: Path | bytes) -> str:
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
    else:
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def _open_zip(path_or_bytes) -> zipfile.ZipFile:
    try:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            return zipfile.ZipFile(io.BytesIO(bytes(path_or_bytes)))
        return zipfile.ZipFile(path_or_bytes)
    except Exception as error:  # noqa: BLE001 - any damage to the directory means "not a readable zip"
        raise DataError(f"The archive cannot be read ({error}); make a new .zip of the folder and try again.") from None


def _archive_size(path_or_bytes) -> int:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return len(path_or_bytes)
    return os.path.getsize(path_or_bytes)


def _check_zip_totals(entries: list[zipfile.ZipInfo], limits: ZipLimits, archive_size: int) -> None:
    """Refuse before writing anything: too many entries, or a whole archive that inflates like a bomb."""
    if len(entries) > limits.max_entries:
        raise DataError(
            f"The archive holds {len(entries):,} entries, more than the limit of {limits.max_entries:,}; "
            "split it into smaller archives or raise the limit."
        )
    declared = sum(entry.file_size for entry in entries)
    if declared > limits.max_archive_ratio * max(archive_size, 1):
        raise DataError(
            f"The archive would unpack to {declared / max(archive_size, 1):,.0f} times its own size "
            f"({human_size(declared)} from {human_size(archive_size)}), more than the limit of "
            f"{limits.max_archive_ratio:,.0f} times: pictures barely shrink in a zip, so this looks like a zip bomb "
            "and nothing of it was unpacked; zip the picture files themselves and try again."
        )


def _plan_entries(entries: list[zipfile.ZipInfo], skipped: list[Skipped], limits: ZipLimits) -> list[tuple]:
    """The entries to extract and their relative paths, first come first served.

    An entry whose path another entry needs as a folder (``a/x.jpg`` and ``a/x.jpg/y.jpg``),
    or the reverse, or that repeats a name, is skipped with the reason; the rest of the
    archive is still extracted.
    """
    plan, files, folders = [], set(), set()
    for entry in entries:
        relative = _safe_entry_path(entry, skipped, limits)
        if relative is None:
            continue
        clash = _path_clash(relative, files, folders)
        if clash is not None:
            skipped.append(Skipped(entry.filename, *clash))
            continue
        files.add(relative)
        parts = relative.split("/")
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        plan.append((entry, relative))
    return plan


def _path_clash(relative: str, files: set[str], folders: set[str]) -> tuple[str, str] | None:
    if relative in files:
        return DUPLICATE_NAME, "the archive holds this name twice"
    if relative in folders:
        return PATH_CLASH, "other files of the archive need this name as a folder"
    parts = relative.split("/")
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in files:
            return PATH_CLASH, f"{prefix} is a file in the archive, so it cannot hold other files"
    return None


class _ByteBudget:
    """Bytes that may still be written; going past it raises ``error`` (counted from real bytes,
    since a header's declared size can lie)."""

    def __init__(self, left: int, error: TransferError):
        self.left = left
        self.error = error

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise self.error


def _byte_budget(declared: int, target: Path, limits: ZipLimits, disk_quota: DiskQuota | None) -> _ByteBudget:
    """Check the declared total against the size limit, the quota and the free disk; the budget
    for the writes that follow."""
    too_big = DataError(
        f"The archive unpacks to {human_size(declared)} or more, more than the size limit of "
        f"{human_size(limits.max_total_bytes)}; downscale the pictures or raise the limit."
    )
    if declared > limits.max_total_bytes:
        raise too_big
    budget = _ByteBudget(limits.max_total_bytes, too_big)
    if disk_quota is not None:
        remaining = disk_quota.remaining()
        over = QuotaExceeded(disk_quota.refusal(declared))
        if declared > remaining:
            raise over
        if remaining < budget.left:
            budget = _ByteBudget(remaining, over)
    check_free_space(target, declared, "the archive")
    return budget


@contextlib.contextmanager
def disk_errors_as_sentences(what: str):
    """An OSError while writing user data becomes a sentence: the disk is full, or it could not be saved."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise DiskFull(disk_full_message(what)) from None
        raise DataError(f"{what[:1].upper()}{what[1:]} could not be saved ({error.strerror or error}); try again.") from None


def _safe_entry_path(entry: zipfile.ZipInfo, skipped: list[Skipped], limits: ZipLimits) -> str | None:
    """The entry's relative POSIX path if it may be extracted, else None (and a skip noted)."""
    name = entry.filename.replace("\\", "/")
    if entry.is_dir():
        return None
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        skipped.append(Skipped(entry.filename, UNSAFE_PATH, "absolute path"))
        return None
    parts = [part for part in PurePosixPath(name).parts if part not in ("", ".")]
    if ".." in parts:
        skipped.append(Skipped(entry.filename, UNSAFE_PATH, "the path climbs out of the archive with '..'"))
        return None
    if _entry_is_link_or_special(entry):
        skipped.append(Skipped(entry.filename, LINK, "links and special files are never extracted"))
        return None
    reason = _skip_reason_for_name(parts)
    if reason:
        skipped.append(Skipped(entry.filename, reason, type_detail(name) if reason == NOT_AN_IMAGE else ""))
        return None
    if any("\x00" in part for part in parts):
        skipped.append(Skipped(entry.filename, UNSAFE_PATH, "a name holds a NUL character"))
        return None
    too_long = _length_problem(parts, limits)
    if too_long:
        skipped.append(Skipped(entry.filename, TOO_LONG, too_long))
        return None
    if entry.flag_bits & 0x1:
        skipped.append(Skipped(entry.filename, ENCRYPTED, "password-protected entries cannot be read"))
        return None
    if entry.file_size > limits.max_ratio * max(entry.compress_size, 1):
        ratio = entry.file_size / max(entry.compress_size, 1)
        skipped.append(Skipped(entry.filename, RATIO, f"{ratio:,.0f}:1, the limit is {limits.max_ratio:,.0f}:1"))
        return None
    return "/".join(parts)


def _length_problem(parts: list[str], limits: ZipLimits) -> str | None:
    longest = max(len(part.encode("utf-8", "replace")) for part in parts)
    if longest > limits.max_name_bytes:
        return f"a name of {longest} bytes, the limit is {limits.max_name_bytes}"
    if len(parts) > limits.max_depth:
        return f"{len(parts)} folders deep, the limit is {limits.max_depth}"
    total = len("/".join(parts).encode("utf-8", "replace"))
    if total > limits.max_path_bytes:
        return f"a path of {total} bytes, the limit is {limits.max_path_bytes}"
    return None


def _entry_is_link_or_special(entry: zipfile.ZipInfo) -> bool:
    mode = entry.external_attr >> 16
    # Archives made on Unix carry the file type in the high bits; 0 means "not stated".
    return mode != 0 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)


def _skip_reason_for_name(parts: list[str]) -> str | None:
    if not parts:
        return UNSAFE_PATH
    if any(part == "__MACOSX" for part in parts):
        return MACOS_METADATA
    if any(part.startswith(".") for part in parts):
        return HIDDEN
    if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
        return NOT_AN_IMAGE
    return None


def type_detail(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return f"{suffix} files are not read as pictures" if suffix else "no picture file ending (.jpg, .png, ...)"


def _extract_entry(archive, entry, target: Path, relative: str, budget: _ByteBudget, skipped: list[Skipped]) -> Path | None:
    """Write one entry; the path written, or None when it was skipped (and why is noted)."""
    destination = target.joinpath(*relative.split("/"))
    if not destination.resolve().is_relative_to(target.resolve()):
        skipped.append(Skipped(entry.filename, UNSAFE_PATH, "the path leads outside the target folder"))
        return None
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(entry) as stream, open(destination, "wb") as out:
            for block in iter(lambda: stream.read(1 << 20), b""):
                budget.spend(len(block))
                out.write(block)
    except TransferError:
        destination.unlink(missing_ok=True)
        raise
    except OSError as error:
        _unlink_quietly(destination)
        if is_disk_full(error):
            raise
        # What the OS refuses (a name too long for this file system, a folder in the way) skips one entry.
        skipped.append(Skipped(entry.filename, UNWRITABLE, error.strerror or str(error)))
        return None
    except Exception as error:  # noqa: BLE001 - zlib, struct, CRC errors...: a damaged entry is skipped
        _unlink_quietly(destination)
        skipped.append(Skipped(entry.filename, CORRUPT_ENTRY, str(error) or type(error).__name__))
        return None
    return destination


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a folder of that name, or gone already


def _write_ingest_log(folder: Path, skipped: list[Skipped]) -> None:
    atomic_write_json(folder / INGEST_LOG, [asdict(item) for item in skipped])


def read_ingest_log(folder: Path) -> list[Skipped]:
    try:
        items = json.loads((folder / INGEST_LOG).read_text())
        return [Skipped(str(i["path"]), str(i["reason"]), str(i.get("detail", ""))) for i in items]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _clean_name(name: str, limit: int = 100) -> str:
    """A file or folder name that is safe on every system: no separators, no leading dot."""
    name = os.path.basename(str(name).replace("\\", "/"))
    name = re.sub(r"[\x00-\x1f<>:\"/\\|?*]", "_", name).strip().lstrip(".").strip()
    return name[:limit]


def _save_upload(folder: Path, file_name: str, data: bytes, skipped: list[Skipped]) -> Path | None:
    """Save one uploaded picture and return where, or note why it was left out and return None."""
    label_path = f"{folder.name}/{file_name}"
    try:
        info = inspect_image(data)
    except ImageError as error:
        skipped.append(Skipped(label_path, error.reason, error.detail))
        return None
    name = _clean_name(file_name) or "image"
    stem, suffix = os.path.splitext(name)
    if suffix.lower() not in IMAGE_EXTENSIONS:
        stem, suffix = name, _extension_for(info)
    destination = _unique_path(folder, stem or "image", suffix)
    atomic_write_bytes(destination, data)
    return destination


def _extension_for(info: ImageInfo) -> str:
    return {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}.get(
        info.format, ".png"
    )


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    candidate = folder / f"{stem}{suffix}"
    number = 1
    while candidate.exists():
        candidate = folder / f"{stem}_{number}{suffix}"
        number += 1
    return candidate
