"""Bring labelled pictures in safely, say what is wrong with them, and split them.

A data set arrives as a folder of class folders, a folder holding ``train/`` and ``val/``
(``valid/``, ``validation/`` or ``test/`` also count as the validation split), a ``.zip`` of
either (with or without one enclosing folder), or pictures uploaded in the browser per class.
:func:`check_dataset` reads it and returns a :class:`Report`: counts, skipped files and why,
duplicates, imbalance, sizes, blocking errors and warnings, and the usable :class:`Dataset`.
Nothing a user gives us can crash the process or write outside the folder we chose.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import statistics
import tempfile
import threading
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from transfer.core import paths
from transfer.core.errors import TransferError
from transfer.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, NOT_AN_IMAGE, ImageError, ImageInfo, inspect_image
from transfer.core.quota import (
    DiskFull,
    DiskQuota,
    QuotaExceeded,
    check_free_space,
    disk_full_message,
    human_size,
    is_disk_full,
)
from transfer.core.runs import atomic_write_bytes, atomic_write_json

TRAIN, VAL = "train", "val"
#: Folder names taken as the validation split, in order of preference.
VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")
#: Pictures smaller than this on their short side get a warning: too small to learn from.
SMALL_IMAGE_PIXELS = 32
#: Largest/smallest class ratio above which imbalance is worth a warning.
IMBALANCE_WARNING_RATIO = 3.0
#: Hidden file in a prepared folder listing what was left out while preparing it.
INGEST_LOG = ".transfer-skipped.json"
#: Present in an unpacked folder once every file is written: a folder without it is never used.
COMPLETE_MARKER = ".complete"

# Reasons a file is left out, besides the picture reasons of transfer.data.images.
HIDDEN = "hidden file"
MACOS_METADATA = "macOS metadata"
OUTSIDE_CLASS = "not in a class folder"
UNSAFE_PATH = "unsafe path"
LINK = "link"
RATIO = "compression ratio too high"
CORRUPT_ENTRY = "corrupt archive entry"
ENCRYPTED = "encrypted"
DUPLICATE_NAME = "duplicate name"
PATH_CLASH = "path clash"
TOO_LONG = "path too long"
UNWRITABLE = "could not be written"


class DataError(TransferError):
    """The data cannot be used as given; the message says what to change."""


# --------------------------------------------------------------------------- data model


@dataclass
class Sample:
    """One labelled picture."""

    path: Path
    label: str
    split: str  # "train" | "val"
    sha256: str


@dataclass
class Dataset:
    """The usable pictures after checking and splitting; ``classes`` fixes the label order."""

    root: Path
    classes: list[str]
    samples: list[Sample]

    @property
    def train(self) -> list[Sample]:
        return [s for s in self.samples if s.split == TRAIN]

    @property
    def val(self) -> list[Sample]:
        return [s for s in self.samples if s.split == VAL]

    def label_index(self, label: str) -> int:
        return self.classes.index(label)

    def by_class(self, split: str | None = None) -> dict[str, list[Sample]]:
        """Samples grouped by class in class order, optionally of one split only."""
        groups: dict[str, list[Sample]] = {name: [] for name in self.classes}
        for sample in self.samples:
            if split is None or sample.split == split:
                groups[sample.label].append(sample)
        return groups

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class and split: ``{class: {"train": n, "val": n}}``."""
        table = {name: {TRAIN: 0, VAL: 0} for name in self.classes}
        for sample in self.samples:
            table[sample.label][sample.split] += 1
        return table

    def fingerprint(self) -> str:
        """A short hash of the contents, labels and split: equal for equal data sets."""
        digest = hashlib.sha256(json.dumps(self.classes).encode())
        for sample in sorted(self.samples, key=lambda s: (s.sha256, s.label, s.split)):
            digest.update(f"{sample.sha256}:{sample.label}:{sample.split};".encode())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict:
        root = Path(self.root)
        return {
            "root": str(root),
            "classes": list(self.classes),
            "samples": [
                {"path": _relative_or_absolute(s.path, root), "label": s.label, "split": s.split, "sha256": s.sha256}
                for s in self.samples
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Dataset":
        root = Path(data["root"])
        samples = [Sample(root / item["path"], item["label"], item["split"], item["sha256"]) for item in data["samples"]]
        return cls(root=root, classes=list(data["classes"]), samples=samples)


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


@dataclass
class Skipped:
    """A file left out, where it was (relative to the data), and why."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class Duplicates:
    """Files with identical content. ``kind``: within_class, conflicting_labels or leakage."""

    kind: str
    sha256: str
    files: list[str]
    labels: list[str]
    splits: list[str]


@dataclass
class Report:
    """Everything worth knowing about a data set before training on it."""

    source: str
    root: str | None = None
    layout: str | None = None  # "class_folders" | "split_folders"
    split: str | None = None  # "given" | "automatic"
    val_fraction: float = 0.2
    seed: int = 0
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[Duplicates] = field(default_factory=list)
    imbalance: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dataset: Dataset | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def total_images(self) -> int:
        return sum(sum(row.values()) for row in self.counts.values())

    def duplicates_of(self, kind: str) -> list[Duplicates]:
        return [group for group in self.duplicates if group.kind == kind]

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "dataset"}
        data["skipped"] = [asdict(item) for item in self.skipped]
        data["duplicates"] = [asdict(item) for item in self.duplicates]
        data["ok"] = self.ok
        data["total_images"] = self.total_images
        data["dataset"] = self.dataset.to_dict() if self.dataset else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """The report :meth:`to_dict` wrote (a check run in another process hands it back so)."""
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields["skipped"] = [Skipped(**item) for item in data.get("skipped", [])]
        fields["duplicates"] = [Duplicates(**item) for item in data.get("duplicates", [])]
        fields["dataset"] = Dataset.from_dict(data["dataset"]) if data.get("dataset") else None
        return cls(**fields)


# --------------------------------------------------------------------------- public entry points


def demo_dataset_path() -> Path:
    """The small data set shipped with the package (public-domain clip art, see its README)."""
    return Path(__file__).resolve().parent / "demo_data"


def load_dataset(
    source: Path | str | bytes, *, val_fraction: float = 0.2, seed: int = 0, workdir: Path | None = None
) -> Dataset:
    """The usable data set at ``source``, or :class:`DataError` with every blocking problem."""
    report = check_dataset(source, val_fraction=val_fraction, seed=seed, workdir=workdir)
    if not report.ok or report.dataset is None:
        raise DataError(" ".join(report.errors))
    return report.dataset


def check_dataset(
    source: Path | str | bytes,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    workdir: Path | None = None,
    limits: ZipLimits = ZipLimits(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Read ``source`` and report on it; never raises for problems in the data itself.

    ``source`` is a folder, a ``.zip`` file or the bytes of a zip. Zips are extracted into
    ``workdir`` (default: a folder named after the zip's content hash in the data cache, so
    checking the same zip twice extracts it once; a web session passes its own private
    folder instead). ``max_pixels`` caps each picture's size (decompression bombs).
    ``progress(done, total)`` is called now and then while the pictures are read.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"The validation fraction must be between 0 and 1 (exclusive), not {val_fraction}.")
    report = Report(source=_describe_source(source), val_fraction=val_fraction, seed=seed)
    try:
        folder = _prepare_folder(source, workdir, limits)
    except TransferError as error:  # over a limit, the disk full, an unreadable archive
        report.errors.append(str(error))
        return report
    report.skipped.extend(_read_ingest_log(folder))
    root = _find_data_root(folder)
    report.root = str(root)
    # File names in the report are relative to what the user gave (the zip's top, the folder).
    layout = _discover(root, folder, report)
    infos = _inspect_all(layout.candidates, folder, report, max_pixels, workers, progress)
    samples = _assign_splits(layout, infos, val_fraction, seed, report)
    _summarise(report, samples, root, folder)
    return report


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
        skipped = _read_ingest_log(target)
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


# --------------------------------------------------------------------------- sources and zips


def _describe_source(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<zip, {len(source):,} bytes>"
    return str(source)


def _prepare_folder(source, workdir: Path | None, limits: ZipLimits) -> Path:
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
        skipped.append(Skipped(entry.filename, reason, _type_detail(name) if reason == NOT_AN_IMAGE else ""))
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


def _type_detail(name: str) -> str:
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


def _read_ingest_log(folder: Path) -> list[Skipped]:
    try:
        items = json.loads((folder / INGEST_LOG).read_text())
        return [Skipped(str(i["path"]), str(i["reason"]), str(i.get("detail", ""))) for i in items]
    except (OSError, ValueError, KeyError, TypeError):
        return []


# --------------------------------------------------------------------------- uploads


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


# --------------------------------------------------------------------------- discovery


@dataclass
class _Candidate:
    path: Path
    label: str
    split: str | None  # given split, or None when it is to be drawn


@dataclass
class _Layout:
    kind: str
    candidates: list[_Candidate]
    given_split: bool


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX"]


def _visible_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.is_dir() and p.name not in (INGEST_LOG, COMPLETE_MARKER))
    except OSError:
        return []


def _find_data_root(folder: Path, max_depth: int = 3) -> Path:
    """Step into lone enclosing folders (``data/`` in ``data.zip``) until the classes appear.

    A lone folder that holds only pictures is a single class, not an enclosure, so we stop.
    """
    for _ in range(max_depth):
        dirs = _visible_dirs(folder)
        has_pictures = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in _visible_files(folder))
        if len(dirs) != 1 or has_pictures or not _visible_dirs(dirs[0]):
            break
        folder = dirs[0]
    return folder


def _split_folders(root: Path) -> tuple[Path | None, Path | None, list[Path]]:
    by_name = {p.name.lower(): p for p in _visible_dirs(root)}
    train = by_name.get("train")
    val_options = [by_name[name] for name in VAL_FOLDER_NAMES if name in by_name]
    val = val_options[0] if val_options else None
    return train, val, val_options[1:]


def _discover(root: Path, base: Path, report: Report) -> _Layout:
    train, val, unused = _split_folders(root)
    if train is not None and val is not None:
        report.layout, report.split = "split_folders", "given"
        for folder in unused:
            report.warnings.append(f"The folder {folder.name}/ is not used: {val.name}/ is the validation split.")
        for other in _visible_dirs(root):
            if other not in (train, val, *unused):
                report.skipped.append(Skipped(_rel(other, base) + "/", OUTSIDE_CLASS, "not train/ or a validation folder"))
        _skip_loose_files(root, base, report)
        candidates = _class_candidates(train, base, TRAIN, report) + _class_candidates(val, base, VAL, report)
        return _Layout("split_folders", candidates, given_split=True)
    if train is not None and len(_visible_dirs(root)) == 1:
        report.warnings.append("There is a train/ folder but no val/ folder: the validation split is drawn from train/.")
        _skip_loose_files(root, base, report)
        root = train
    report.layout, report.split = "class_folders", "automatic"
    return _Layout("class_folders", _class_candidates(root, base, None, report), given_split=False)


def _skip_loose_files(folder: Path, base: Path, report: Report) -> None:
    for path in _visible_files(folder):
        reason = _name_reason(path)
        report.skipped.append(Skipped(_rel(path, base), reason or OUTSIDE_CLASS, _type_detail(path.name) if reason == NOT_AN_IMAGE else ""))
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path.name.startswith(".") or path.name == "__MACOSX"):
            report.skipped.append(Skipped(_rel(path, base) + "/", _name_reason(path) or HIDDEN))


def _class_candidates(folder: Path, base: Path, split: str | None, report: Report) -> list[_Candidate]:
    _skip_loose_files(folder, base, report)
    candidates = []
    for class_dir in _visible_dirs(folder):
        for path in _walk_files(class_dir, base, report):
            candidates.append(_Candidate(path, class_dir.name, split))
    return candidates


def _walk_files(class_dir: Path, base: Path, report: Report) -> list[Path]:
    """Every picture under a class folder, in nested folders too; others noted as skipped."""
    found = []
    for directory, subdirs, files in os.walk(class_dir):  # does not follow folder links
        subdirs.sort()
        kept = [d for d in subdirs if not d.startswith(".") and d != "__MACOSX"]
        for dropped in sorted(set(subdirs) - set(kept)):
            report.skipped.append(Skipped(_rel(Path(directory) / dropped, base) + "/", _name_reason(Path(dropped)) or HIDDEN))
        subdirs[:] = kept
        for name in sorted(files):
            path = Path(directory) / name
            reason = _name_reason(path)
            if reason:
                report.skipped.append(Skipped(_rel(path, base), reason, _type_detail(name) if reason == NOT_AN_IMAGE else ""))
            else:
                found.append(path)
    return found


def _name_reason(path: Path) -> str | None:
    if path.name == "__MACOSX":
        return MACOS_METADATA
    if path.name.startswith("."):
        return HIDDEN
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return NOT_AN_IMAGE
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(Path(path).resolve())


# --------------------------------------------------------------------------- reading pictures


@dataclass
class _Read:
    candidate: _Candidate
    sha256: str
    info: ImageInfo


def _inspect_all(candidates, base: Path, report: Report, max_pixels: int, workers: int | None,
                 progress: Callable[[int, int], None] | None = None) -> list[_Read]:
    """Hash and fully decode every candidate once, in threads (decoding releases the GIL)."""
    counter = _ProgressCounter(len(candidates), progress)

    def inspect_one(candidate: _Candidate):
        try:
            data = candidate.path.read_bytes()
        except OSError as error:
            return Skipped(_rel(candidate.path, base), "unreadable", error.strerror or str(error))
        try:
            info = inspect_image(data, max_pixels)
        except ImageError as error:
            return Skipped(_rel(candidate.path, base), error.reason, error.detail)
        return _Read(candidate, hashlib.sha256(data).hexdigest(), info)

    def read(candidate: _Candidate):
        try:
            return inspect_one(candidate)
        finally:
            counter.step()

    workers = workers or min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(read, candidates))
    report.skipped.extend(r for r in results if isinstance(r, Skipped))
    return [r for r in results if isinstance(r, _Read)]


class _ProgressCounter:
    """Counts pictures read from several threads; reports about every 1% (and at the end)."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total, self.callback, self.done = total, callback, 0
        self.every = max(1, total // 100)
        self.lock = threading.Lock()

    def step(self) -> None:
        if self.callback is None:
            return
        with self.lock:
            self.done += 1
            if self.done % self.every == 0 or self.done == self.total:
                self.callback(self.done, self.total)


# --------------------------------------------------------------------------- splitting


def _assign_splits(layout: _Layout, reads: list[_Read], val_fraction: float, seed: int, report: Report) -> list[_Read]:
    if layout.given_split:
        return reads
    by_class: dict[str, list[_Read]] = defaultdict(list)
    for item in reads:
        by_class[item.candidate.label].append(item)
    for label, items in by_class.items():
        val_hashes = stratified_val_hashes(sorted({i.sha256 for i in items}), val_fraction, f"{seed}:{label}")
        for item in items:
            item.candidate.split = VAL if item.sha256 in val_hashes else TRAIN
    return reads


def stratified_val_hashes(hashes: list[str], val_fraction: float, seed: str) -> set[str]:
    """Which of one class's distinct pictures go to validation.

    Drawn over content hashes, so copies of one picture always land on the same side and the
    draw does not depend on file names or on the other classes. A class with two or more
    distinct pictures keeps at least one on each side.
    """
    count = len(hashes)
    if count < 2:
        return set()
    n_val = min(max(1, round(count * val_fraction)), count - 1)
    order = sorted(hashes)
    random.Random(seed).shuffle(order)
    return set(order[:n_val])


# --------------------------------------------------------------------------- the report


def _summarise(report: Report, reads: list[_Read], root: Path, base: Path) -> None:
    classes = sorted({r.candidate.label for r in reads})
    report.classes = classes
    report.counts = {name: {TRAIN: 0, VAL: 0} for name in classes}
    for item in reads:
        report.counts[item.candidate.label][item.candidate.split] += 1
    _report_duplicates(report, reads, base)
    _report_sizes(report, reads)
    _report_balance(report)
    _report_blocking(report, reads)
    _report_skips(report)
    if report.ok:
        samples = [Sample(r.candidate.path, r.candidate.label, r.candidate.split, r.sha256) for r in reads]
        report.dataset = Dataset(root=root, classes=classes, samples=samples)


def _report_duplicates(report: Report, reads: list[_Read], base: Path) -> None:
    groups: dict[str, list[_Read]] = defaultdict(list)
    for item in reads:
        groups[item.sha256].append(item)
    for sha, items in sorted(groups.items()):
        if len(items) < 2:
            continue
        labels = [i.candidate.label for i in items]
        splits = [i.candidate.split for i in items]
        files = [_rel(i.candidate.path, base) for i in items]
        if len(set(labels)) > 1:
            kind = "conflicting_labels"
        elif len(set(splits)) > 1:
            kind = "leakage"
        else:
            kind = "within_class"
        report.duplicates.append(Duplicates(kind, sha, files, labels, splits))
    conflicting = report.duplicates_of("conflicting_labels")
    leaked = report.duplicates_of("leakage") + [
        g for g in conflicting if len(set(g.splits)) > 1
    ]
    within = report.duplicates_of("within_class")
    if within:
        report.warnings.append(
            f"{len(within)} picture(s) appear more than once in the same class; the copies add weight "
            "to one picture, so remove them unless that is intended."
        )
    if conflicting:
        example = ", ".join(conflicting[0].files[:3])
        report.warnings.append(
            f"{len(conflicting)} picture(s) appear under two or more classes (for example {example}); "
            "keep each picture in the one class it belongs to."
        )
    if leaked:
        report.warnings.append(
            f"{len(leaked)} validation picture(s) are exact copies of training pictures, so validation "
            "accuracy will look better than it is; remove the copies from the validation folder."
        )


def _report_sizes(report: Report, reads: list[_Read]) -> None:
    if not reads:
        return
    widths = [r.info.width for r in reads]
    heights = [r.info.height for r in reads]
    small = [r for r in reads if min(r.info.width, r.info.height) < SMALL_IMAGE_PIXELS]
    report.sizes = {
        "min_width": min(widths),
        "min_height": min(heights),
        "max_width": max(widths),
        "max_height": max(heights),
        "median_width": int(statistics.median(widths)),
        "median_height": int(statistics.median(heights)),
        "small_images": len(small),
        "small_threshold": SMALL_IMAGE_PIXELS,
    }
    report.modes = dict(Counter(r.info.mode for r in reads).most_common())
    report.formats = dict(Counter(r.info.format for r in reads).most_common())
    if small:
        report.warnings.append(
            f"{len(small)} picture(s) are smaller than {SMALL_IMAGE_PIXELS} pixels on a side; "
            "they hold little detail to learn from, so use larger pictures where you can."
        )


def _report_balance(report: Report) -> None:
    totals = {name: sum(row.values()) for name, row in report.counts.items()}
    if len(totals) < 2:
        return
    largest = max(totals, key=lambda name: (totals[name], name))
    smallest = min(totals, key=lambda name: (totals[name], name))
    ratio = totals[largest] / max(totals[smallest], 1)
    report.imbalance = {
        "largest": largest,
        "largest_count": totals[largest],
        "smallest": smallest,
        "smallest_count": totals[smallest],
        "ratio": round(ratio, 2),
    }
    if ratio > IMBALANCE_WARNING_RATIO:
        report.warnings.append(
            f"The classes are imbalanced: {largest} has {totals[largest]} pictures, {smallest} only "
            f"{totals[smallest]} ({ratio:.1f}x); add pictures to {smallest} or expect it to be under-predicted."
        )


def _report_blocking(report: Report, reads: list[_Read]) -> None:
    if not reads:
        report.errors.append(
            "No readable picture was found; give a folder (or .zip) with one sub-folder per class, "
            "each holding JPEG or PNG pictures."
        )
        return
    if len(report.classes) < 2:
        found = f"only one class ({report.classes[0]})" if report.classes else "no class"
        report.errors.append(
            f"Found {found}; a classifier needs at least 2 classes, each in its own sub-folder."
        )
    for name, row in report.counts.items():
        total = row[TRAIN] + row[VAL]
        if total < 2:
            report.errors.append(f"The class {name} has only {total} readable picture; add at least one more.")
        elif row[TRAIN] == 0:
            report.errors.append(f"The class {name} has no training pictures; add some to train/{name}/.")
        elif row[VAL] == 0 and report.split == "given":
            report.warnings.append(f"The class {name} has no validation pictures; its accuracy cannot be measured.")


def _skipped_by_type(item: Skipped) -> bool:
    return item.reason == NOT_AN_IMAGE and item.detail.endswith(("not read as pictures", "(.jpg, .png, ...)"))


def _report_skips(report: Report) -> None:
    # Files that were never meant as pictures (a README, .DS_Store) are listed but not warned of.
    unusable = [s for s in report.skipped if s.reason not in (HIDDEN, MACOS_METADATA) and not _skipped_by_type(s)]
    if unusable:
        reasons = Counter(s.reason for s in unusable)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        report.warnings.append(f"{len(unusable)} file(s) were left out ({summary}); see the list of skipped files.")
