"""The data model: a labelled picture (:class:`Sample`), the usable data set (:class:`Dataset`), the
error raised when data cannot be used as given, and the pictures as the check finds them
(:class:`Candidate`, :class:`Layout`, :class:`ReadPicture`), which discovery, splits and the report share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from transfer.core.errors import TransferError
from transfer.data.images import ImageInfo

TRAIN, VAL = "train", "val"


class DataError(TransferError):
    """The data cannot be used as given; the message says what to change."""


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


def relative_name(path: Path, root: Path) -> str:
    """``path`` as a POSIX name relative to ``root`` (the path as it is when it lies outside)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(Path(path).resolve())


# --------------------------------------------------------------------------- pictures as found


@dataclass
class Candidate:
    """A file that may be a picture of class ``label``, as discovery found it."""

    path: Path
    label: str
    split: str | None  # given split, or None when it is to be drawn


@dataclass
class Layout:
    """How a data set is laid out (``class_folders`` or ``split_folders``) and what it holds."""

    kind: str
    candidates: list[Candidate]
    given_split: bool


@dataclass
class ReadPicture:
    """A candidate read whole: its content hash and what the picture is."""

    candidate: Candidate
    sha256: str
    info: ImageInfo
