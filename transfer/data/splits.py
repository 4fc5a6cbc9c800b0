"""Which pictures are for validation: given by the folders, or drawn per class over content hashes,
with pictures whose side was fixed earlier (:data:`PINNED_SPLITS`) kept where they are."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from transfer.data.report import Report
from transfer.data.samples import TRAIN, VAL, Layout, ReadPicture



#: Hidden file in a data root: ``{sha256: "train"|"val"}`` for pictures whose side is fixed (pictures
#: added after a split was drawn), so adding pictures never moves a validation picture.
PINNED_SPLITS = ".splits.json"


def assign_splits(layout: Layout, reads: list[ReadPicture], val_fraction: float, seed: int, report: Report,
                   pinned: dict[str, str] | None = None) -> list[ReadPicture]:
    if layout.given_split:
        return reads
    pinned = pinned or {}
    by_class: dict[str, list[ReadPicture]] = defaultdict(list)
    for item in reads:
        by_class[item.candidate.label].append(item)
    for label, items in by_class.items():
        # Pinned pictures keep their side and stay out of the draw, so the draw over the others is
        # exactly the one made before they were added.
        drawn = sorted({i.sha256 for i in items if i.sha256 not in pinned})
        val_hashes = stratified_val_hashes(drawn, val_fraction, f"{seed}:{label}")
        for item in items:
            side = pinned.get(item.sha256)
            item.candidate.split = side if side in (TRAIN, VAL) else VAL if item.sha256 in val_hashes else TRAIN
    return reads


def read_pinned_splits(root: Path) -> dict[str, str]:
    """The pictures of the data set at ``root`` whose split is fixed (see :data:`PINNED_SPLITS`)."""
    try:
        pinned = json.loads((Path(root) / PINNED_SPLITS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in pinned.items() if v in (TRAIN, VAL)} if isinstance(pinned, dict) else {}


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
