"""What the data check says: the :class:`Report` (counts, skipped files and why, duplicates,
imbalance, sizes, blocking errors and warnings, the usable data set) and how it is summed up."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transfer.data.images import NOT_AN_IMAGE
from transfer.data.samples import TRAIN, VAL, Dataset, ReadPicture, Sample, relative_name



#: Pictures smaller than this on their short side get a warning: too small to learn from.
SMALL_IMAGE_PIXELS = 32


#: Largest/smallest class ratio above which imbalance is worth a warning.
IMBALANCE_WARNING_RATIO = 3.0
# Every page that shows a model draws a classes x classes grid (the confusion matrix) and a row per
# class: far past what anyone labels by hand, a data set is refused rather than drawn.
MAX_CLASSES = 1000


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


def summarise(report: Report, reads: list[ReadPicture], root: Path, base: Path) -> None:
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


def _report_duplicates(report: Report, reads: list[ReadPicture], base: Path) -> None:
    groups: dict[str, list[ReadPicture]] = defaultdict(list)
    for item in reads:
        groups[item.sha256].append(item)
    for sha, items in sorted(groups.items()):
        if len(items) < 2:
            continue
        labels = [i.candidate.label for i in items]
        splits = [i.candidate.split for i in items]
        files = [relative_name(i.candidate.path, base) for i in items]
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


def _report_sizes(report: Report, reads: list[ReadPicture]) -> None:
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


def _report_blocking(report: Report, reads: list[ReadPicture]) -> None:
    if not reads:
        report.errors.append(
            "No readable picture was found; give a folder (or .zip) with one sub-folder per class, "
            "each holding JPEG or PNG pictures."
        )
        return
    if len(report.classes) > MAX_CLASSES:
        report.errors.append(
            f"Found {len(report.classes):,} classes; the studio trains at most {MAX_CLASSES:,}. Check that each "
            "sub-folder is a class (not one folder per picture), or merge classes.")
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
