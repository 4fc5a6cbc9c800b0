"""Disk limits: how much one browser session may store, and what a full disk looks like.

A session's quota covers everything under its workspace folder (uploads and runs). Archives
are checked against it twice: before anything is unpacked (from the sizes the archive
declares) and while writing (from the bytes actually written), so neither a lying header nor
a race between two tabs lets a session write past it. A full disk is turned into one
sentence (:class:`DiskFull`) wherever files are written from user input.

Runs count too: a session's job manager leaves its quota in the runs folder (``.quota.json``),
and a worker checks every checkpoint and weights file it writes against it
(:func:`check_written_file`), so a run that grows past the quota stops with a sentence instead
of filling the disk.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_json, read_json

SESSION_QUOTA_ENV = "TRANSFER_SESSION_QUOTA_GB"
DEFAULT_SESSION_QUOTA_GB = 5.0
#: Kept free on the disk whatever the quotas say, so the studio itself can still write.
DISK_RESERVE_BYTES = 64 * 1024**2
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
QUOTA_FILE = ".quota.json"  # in a runs folder: the quota its runs' workers write under


class QuotaExceeded(TransferError):
    """The session would store more than its disk quota."""


class DiskFull(TransferError):
    """The disk (or the user's disk quota of the operating system) has no room left."""


def disk_full_message(what: str = "the upload") -> str:
    return (f"The disk is full, so {what} could not be saved (nothing of this upload was kept); "
            "delete old uploads or runs (or ask the administrator to free space) and try again.")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


def folder_bytes(folder: Path) -> int:
    """Bytes used by the files under ``folder`` (links are not followed, and count as nothing)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name), follow_symlinks=False).st_size
            except OSError:
                continue  # removed while we were counting
    return total


def session_quota_bytes() -> int:
    """``$TRANSFER_SESSION_QUOTA_GB`` (decimal gigabytes, fractions allowed), else 5 GB."""
    raw = os.environ.get(SESSION_QUOTA_ENV, "").strip()
    try:
        gigabytes = float(raw) if raw else DEFAULT_SESSION_QUOTA_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:
        raise QuotaExceeded(f"{SESSION_QUOTA_ENV} must be a positive number of gigabytes, not {raw!r}; fix the setting.")
    return int(gigabytes * 1e9)


@dataclass(frozen=True)
class DiskQuota:
    """At most ``limit`` bytes under ``root``."""

    root: Path
    limit: int

    @classmethod
    def for_session(cls, workspace: Path) -> "DiskQuota":
        return cls(Path(workspace), session_quota_bytes())

    def used(self) -> int:
        return folder_bytes(self.root)

    def remaining(self) -> int:
        return max(0, self.limit - self.used())

    def refusal(self, needed: int) -> str:
        """The sentence for an upload of ``needed`` bytes that does not fit."""
        used = self.used()
        return (f"This needs {human_size(needed)}, but this session already stores {human_size(used)} of its "
                f"{human_size(self.limit)} quota; delete uploads or runs you no longer need (Data and Train pages) "
                "and try again.")

    def check(self, needed: int) -> None:
        if needed > self.remaining():
            raise QuotaExceeded(self.refusal(needed))

    def leave_in(self, runs_dir: Path) -> None:
        """Tell the workers of ``runs_dir``'s runs which quota they write under."""
        path = Path(runs_dir) / QUOTA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"root": str(self.root), "limit": self.limit}
        if read_json(path) != entry:
            atomic_write_json(path, entry)

    @classmethod
    def left_in(cls, runs_dir: Path) -> "DiskQuota | None":
        """The quota ``runs_dir``'s runs write under, or None (a terminal's runs folder has none)."""
        entry = read_json(Path(runs_dir) / QUOTA_FILE)
        try:
            return cls(Path(entry["root"]), int(entry["limit"]))
        except (TypeError, KeyError, ValueError):
            return None


def check_written_file(runs_dir: Path, written: Path, replaces: Path, what: str) -> None:
    """Refuse a file a run just wrote (``written``, a temporary name that will replace
    ``replaces``) when it takes the session past its quota; the caller removes it."""
    quota = DiskQuota.left_in(runs_dir)
    if quota is None:
        return
    try:
        replaced = replaces.stat().st_size
    except OSError:
        replaced = 0
    used = quota.used() - replaced
    if used > quota.limit:
        raise QuotaExceeded(
            f"The {what} ({human_size(written.stat().st_size)}) would take this session to {human_size(used)}, "
            f"past its {human_size(quota.limit)} disk quota, so the run stopped; delete uploads or runs you no "
            "longer need (Data and Train pages), then resume it.")


def check_free_space(folder: Path, needed: int, what: str = "the upload") -> None:
    """Refuse before writing when the disk holding ``folder`` cannot take ``needed`` more bytes."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the writes themselves will say so
    if needed + DISK_RESERVE_BYTES > free:
        raise DiskFull(disk_full_message(what))


def human_size(count: int) -> str:
    """A byte count as people read it (decimal units, as the quota is set)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
