"""Bring labelled pictures in safely, say what is wrong with them, and split them.

A data set arrives as a folder of class folders, a folder holding ``train/`` and ``val/``
(``valid/``, ``validation/`` or ``test/`` also count as the validation split), a ``.zip`` of
either (with or without one enclosing folder), or pictures uploaded in the browser per class.
:func:`check_dataset` reads it and returns a :class:`~transfer.data.report.Report`: counts,
skipped files and why, duplicates, imbalance, sizes, blocking errors and warnings, and the usable
:class:`~transfer.data.samples.Dataset`. Nothing a user gives us can crash the process or write
outside the folder we chose. The steps live beside it, one concern each: ``archives`` (zips and
uploads, safely), ``discovery`` (finding and reading the pictures), ``splits`` (validation
pictures) and ``report`` (what is said about them); ``samples`` is the data model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from transfer.core.errors import TransferError
from transfer.data.archives import (
    ZipLimits,
    describe_source,
    prepare_folder,
    read_ingest_log,
)
from transfer.data.discovery import discover, find_data_root, inspect_all
from transfer.data.picture import MAX_PIXELS
from transfer.data.report import Report, summarise
from transfer.data.samples import DataError, Dataset
from transfer.data.splits import assign_splits, read_pinned_splits


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
    max_pixels: int = MAX_PIXELS,
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
    report = Report(source=describe_source(source), val_fraction=val_fraction, seed=seed)
    try:
        folder = prepare_folder(source, workdir, limits)
    except TransferError as error:  # over a limit, the disk full, an unreadable archive
        report.errors.append(str(error))
        return report
    report.skipped.extend(read_ingest_log(folder))
    root = find_data_root(folder)
    report.root = str(root)
    # File names in the report are relative to what the user gave (the zip's top, the folder).
    layout = discover(root, folder, report)
    infos = inspect_all(layout.candidates, folder, report, max_pixels, workers, progress)
    samples = assign_splits(layout, infos, val_fraction, seed, report, read_pinned_splits(root))
    summarise(report, samples, root, folder)
    return report
