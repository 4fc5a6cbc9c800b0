"""Finding the pictures of a data set: stepping into lone enclosing folders, recognising class
folders or ``train/`` and ``val/`` splits, noting every file left out and why, and reading
(hashing and fully decoding) each candidate picture once."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from transfer.data.archives import COMPLETE_MARKER, INGEST_LOG, type_detail
from transfer.data.images import (
    IMAGE_EXTENSIONS,
    NOT_AN_IMAGE,
    ImageError,
    inspect_image,
)
from transfer.data.report import HIDDEN, MACOS_METADATA, OUTSIDE_CLASS, Report, Skipped
from transfer.data.samples import TRAIN, VAL, Candidate, Layout, ReadPicture, relative_name
from transfer.data.splits import PINNED_SPLITS

#: Folder names taken as the validation split, in order of preference.
VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX"]


def _visible_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir()
                      if not p.is_dir() and p.name not in (INGEST_LOG, COMPLETE_MARKER, PINNED_SPLITS))
    except OSError:
        return []


def find_data_root(folder: Path, max_depth: int = 3) -> Path:
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


def discover(root: Path, base: Path, report: Report) -> Layout:
    train, val, unused = _split_folders(root)
    if train is not None and val is not None:
        report.layout, report.split = "split_folders", "given"
        for folder in unused:
            report.warnings.append(f"The folder {folder.name}/ is not used: {val.name}/ is the validation split.")
        for other in _visible_dirs(root):
            if other not in (train, val, *unused):
                report.skipped.append(Skipped(relative_name(other, base) + "/", OUTSIDE_CLASS, "not train/ or a validation folder"))
        _skip_loose_files(root, base, report)
        candidates = _class_candidates(train, base, TRAIN, report) + _class_candidates(val, base, VAL, report)
        return Layout("split_folders", candidates, given_split=True)
    if train is not None and len(_visible_dirs(root)) == 1:
        report.warnings.append("There is a train/ folder but no val/ folder: the validation split is drawn from train/.")
        _skip_loose_files(root, base, report)
        root = train
    report.layout, report.split = "class_folders", "automatic"
    return Layout("class_folders", _class_candidates(root, base, None, report), given_split=False)


def _skip_loose_files(folder: Path, base: Path, report: Report) -> None:
    for path in _visible_files(folder):
        reason = _name_reason(path)
        report.skipped.append(Skipped(relative_name(path, base), reason or OUTSIDE_CLASS, type_detail(path.name) if reason == NOT_AN_IMAGE else ""))
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path.name.startswith(".") or path.name == "__MACOSX"):
            report.skipped.append(Skipped(relative_name(path, base) + "/", _name_reason(path) or HIDDEN))


def _class_candidates(folder: Path, base: Path, split: str | None, report: Report) -> list[Candidate]:
    _skip_loose_files(folder, base, report)
    candidates = []
    for class_dir in _visible_dirs(folder):
        for path in _walk_files(class_dir, base, report):
            candidates.append(Candidate(path, class_dir.name, split))
    return candidates


def _walk_files(class_dir: Path, base: Path, report: Report) -> list[Path]:
    """Every picture under a class folder, in nested folders too; others noted as skipped."""
    found = []
    for directory, subdirs, files in os.walk(class_dir):  # does not follow folder links
        subdirs.sort()
        kept = [d for d in subdirs if not d.startswith(".") and d != "__MACOSX"]
        for dropped in sorted(set(subdirs) - set(kept)):
            report.skipped.append(Skipped(relative_name(Path(directory) / dropped, base) + "/", _name_reason(Path(dropped)) or HIDDEN))
        subdirs[:] = kept
        for name in sorted(files):
            path = Path(directory) / name
            reason = _name_reason(path)
            if reason:
                report.skipped.append(Skipped(relative_name(path, base), reason, type_detail(name) if reason == NOT_AN_IMAGE else ""))
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


def inspect_all(candidates, base: Path, report: Report, max_pixels: int, workers: int | None,
                 progress: Callable[[int, int], None] | None = None) -> list[ReadPicture]:
    """Hash and fully decode every candidate once, in threads (decoding releases the GIL)."""
    counter = _ProgressCounter(len(candidates), progress)

    def inspect_one(candidate: Candidate):
        try:
            data = candidate.path.read_bytes()
        except OSError as error:
            return Skipped(relative_name(candidate.path, base), "unreadable", error.strerror or str(error))
        try:
            info = inspect_image(data, max_pixels)
        except ImageError as error:
            return Skipped(relative_name(candidate.path, base), error.reason, error.detail)
        return ReadPicture(candidate, hashlib.sha256(data).hexdigest(), info)

    def read(candidate: Candidate):
        try:
            return inspect_one(candidate)
        finally:
            counter.step()

    workers = workers or min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(read, candidates))
    report.skipped.extend(r for r in results if isinstance(r, Skipped))
    return [r for r in results if isinstance(r, ReadPicture)]


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
