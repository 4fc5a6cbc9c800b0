"""Cached engine calls that several pages share, so a rerun never re-scans or re-measures."""

from __future__ import annotations

import streamlit as st

from transfer.data.checks import check_bounded
from transfer.data.report import Report
from transfer.data.uploads import content_signature


@st.cache_data(show_spinner="Checking the pictures ...", max_entries=16)
def dataset_report(source: str, val_fraction: float, seed: int, signature: str) -> Report:
    """The validation report of a data set, kept per source, split and content: ``signature``
    (:func:`~transfer.data.uploads.content_signature`, the files' names, sizes and times) makes a
    folder with a file added, removed or rewritten in place checked again, and a rerun or a
    slider moved back reads no picture again.

    Large data sets are checked in the server's bounded pool of worker processes."""
    return check_bounded(source, val_fraction, seed, signature)


def chosen_report(choice: dict) -> Report:
    """The report of the data set this session chose (``session.chosen_dataset()``)."""
    source = str(choice["source"])
    return dataset_report(source, float(choice["val_fraction"]), int(choice["seed"]), content_signature(source))


@st.cache_data(show_spinner=False, max_entries=64)
def catalogue_rows(search: str = "") -> list[dict]:
    """The backbone catalogue as table rows, bundled backbones first."""
    from transfer.models.catalogue import list_backbones

    return [entry.to_dict() for entry in list_backbones(search or None, timm_limit=20)]


@st.cache_data(show_spinner="Preparing augmented samples ...", max_entries=32)
def augmentation_preview(_samples: list, sample_ids: tuple, backbone: str, image_size: int, preset: str) -> list:
    """Augmented copies of a few training pictures, as training will see them (``sample_ids`` keys
    the cache); made in a child process, so the server does not load torch for them."""
    from transfer.runtime.page_helpers import augmentation_preview_in_child

    return augmentation_preview_in_child(_samples, backbone, image_size, preset)
