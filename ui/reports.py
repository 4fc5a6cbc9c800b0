"""Cached engine calls that several pages share, so a rerun never re-scans or re-measures."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from transfer.checks import check_bounded
from transfer.data import Report


@st.cache_data(show_spinner="Checking the pictures ...", max_entries=16)
def dataset_report(source: str, val_fraction: float, seed: int, version: float) -> Report:
    """The validation report of a data set; ``version`` (the source's mtime) invalidates it.

    Large data sets are checked in the server's bounded pool of worker processes."""
    return check_bounded(source, val_fraction, seed, str(version))


def chosen_report(choice: dict) -> Report:
    source = Path(choice["source"])
    return dataset_report(str(source), float(choice["val_fraction"]), int(choice["seed"]), _version(source))


def _version(source: Path) -> float:
    """Latest change under ``source``: a folder's mtime moves whenever a file in it is added or removed."""
    if not source.exists():
        return 0.0
    if source.is_file():
        return source.stat().st_mtime
    return max((Path(root).stat().st_mtime for root, _, _ in os.walk(source)), default=0.0)


@st.cache_data(show_spinner=False, max_entries=64)
def catalogue_rows(search: str = "") -> list[dict]:
    """The backbone catalogue as table rows, bundled backbones first."""
    from transfer.backbones import list_backbones

    return [entry.to_dict() for entry in list_backbones(search or None, timm_limit=20)]


@st.cache_data(show_spinner="Measuring this machine's speed ...", max_entries=32)
def forward_seconds(backbone: str, image_size: int) -> float:
    """Seconds per picture for one forward pass of ``backbone`` here (random weights suffice)."""
    from transfer.backbones import load_backbone
    from transfer.estimate import measure_forward_seconds

    return measure_forward_seconds(load_backbone(backbone, pretrained=False), image_size)


@st.cache_data(show_spinner="Preparing augmented samples ...", max_entries=32)
def augmentation_preview(_samples: list, sample_ids: tuple, backbone: str, image_size: int, preset: str) -> list:
    """Augmented copies of a few training pictures, as training will see them (``sample_ids`` keys the cache)."""
    from transfer.augment import preprocessing_for, preview
    from transfer.backbones import get_backbone
    from transfer.cache import DecodedImageCache

    prep = preprocessing_for(get_backbone(backbone).preprocessing, image_size)
    arrays = [DecodedImageCache().get(sample, prep.resize_size) for sample in _samples]
    return preview(arrays, prep, preset)


class LearningRateFinderError(Exception):
    pass


def find_learning_rate(source: str, method: str, backbone: str, image_size: int, batch_size: int) -> dict:
    """Run the range test in its own process (the web server never trains) and return its JSON."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "transfer.cli", "lr-find", source, "--method", method, "--backbone", backbone,
               "--image-size", str(image_size), "--batch-size", str(batch_size), "--steps", "60", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode != 0 or "suggestion" not in result:
        raise LearningRateFinderError(result.get("error") or "The learning-rate finder stopped unexpectedly.")
    return result
