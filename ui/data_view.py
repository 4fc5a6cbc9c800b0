"""Pictures of a data report for the Data page: counts chart, thumbnails, problems, the split.

Only presentation lives here; the report itself comes from :func:`transfer.data.dataset.check_dataset`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import ImageOps

from transfer.analysis.trust import percent, plural
from transfer.data import checks
from transfer.data.report import Report
from transfer.data.samples import TRAIN, VAL
from transfer.core.errors import TransferError
from transfer.data.images import ImageError, thumbnail, to_array
from transfer.data.uploads import content_signature
from ui import reports

THUMBNAIL_PIXELS = 96
THUMBNAILS_PER_CLASS = 8
_SPLIT_COLOURS = {TRAIN: "#4C78A8", VAL: "#F58518"}
_DUPLICATE_TITLES = {
    "conflicting_labels": "filed under two or more classes",
    "leakage": "in both training and validation",
    "within_class": "repeated within one class",
}


def report_or_progress(choice: dict) -> Report | None:
    """The chosen data set's report, or None while a large data set is still being checked in the
    worker pool (then a progress bar is shown, and the page reruns by itself once the report is ready)."""
    if not checks.is_large(choice["source"]):
        return reports.chosen_report(choice)
    source, val_fraction, seed = str(choice["source"]), float(choice["val_fraction"]), int(choice["seed"])
    signature = content_signature(source)
    job = checks.shared_pool().submit(source, val_fraction, seed, signature)
    if job.done():
        failure = job.future.exception()
        if failure is not None and not isinstance(failure, TransferError):  # the worker process died
            raise TransferError("Checking the pictures stopped unexpectedly; reload the page to try again.")
        return job.result()
    check_progress(job)
    return None


@st.fragment(run_every=1.0)
def check_progress(job) -> None:
    if job.done():
        st.rerun(scope="app")
    progress = job.progress()
    if progress is None:
        st.progress(0.0, text="Waiting for a free checker: other data sets are being checked.")
        return
    done, total = progress
    st.progress(done / max(total, 1), text=f"Checking the pictures: {done:,} of {total:,} read.")


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail_array(path: str, version: str, size: int = THUMBNAIL_PIXELS) -> np.ndarray | None:
    """A square RGB copy of the picture at ``path``, padded with white so rows line up.

    ``version`` (content hash, or size and mtime) keys the cache, so a changed file is redrawn.
    """
    try:
        return to_array(ImageOps.pad(thumbnail(path, size), (size, size), color="white"))
    except ImageError:
        return None


def render_problems(report: Report) -> None:
    """Blocking errors first (they stop training), then warnings, each as its own sentence."""
    for error in report.errors:
        st.error(error, icon=":material/block:")
    for warning in report.warnings:
        st.warning(warning, icon=":material/warning:")
    if report.ok:
        st.success(
            f"{report.total_images} pictures in {len(report.classes)} classes are ready for training.", icon=":material/check_circle:"
        )
    else:
        st.info("Fix the problems above, then the data set can be used for training.", icon=":material/info:")


def render_summary(report: Report) -> None:
    columns = st.columns(4)
    columns[0].metric("Classes", len(report.classes))
    columns[1].metric("Pictures", report.total_images)
    columns[2].metric("Left out", len(report.skipped))
    balance = report.imbalance.get("ratio")
    columns[3].metric("Largest / smallest class", f"{balance:.1f}x" if balance else "–")
    details = []
    if report.sizes:
        s = report.sizes
        details.append(
            f"Sizes from {s['min_width']} x {s['min_height']} to {s['max_width']} x {s['max_height']} pixels "
            f"(median {s['median_width']} x {s['median_height']})."
        )
    if report.modes:
        details.append("Colour modes: " + ", ".join(f"{mode} {n}" for mode, n in report.modes.items()) + ".")
    if report.formats:
        details.append("Formats: " + ", ".join(f"{fmt} {n}" for fmt, n in report.formats.items()) + ".")
    if details:
        st.caption(" ".join(details))


def counts_table(report: Report) -> list[dict]:
    return [
        {"Class": name, "Training": row[TRAIN], "Validation": row[VAL], "Total": row[TRAIN] + row[VAL]}
        for name, row in report.counts.items()
    ]


def counts_chart(report: Report) -> go.Figure:
    """Pictures per class, training and validation stacked."""
    classes = list(report.counts)
    figure = go.Figure()
    for split, title in ((TRAIN, "Training"), (VAL, "Validation")):
        figure.add_bar(
            name=title, x=classes, y=[report.counts[name][split] for name in classes], marker_color=_SPLIT_COLOURS[split]
        )
    figure.update_layout(
        barmode="stack",
        height=300,
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis_title="pictures",
        legend=dict(orientation="h", y=1.12),
    )
    return figure


def render_counts(report: Report) -> None:
    if not report.counts:
        return
    chart, table = st.columns([3, 2])
    with chart:
        st.plotly_chart(counts_chart(report))
    with table:
        st.table(counts_table(report))


def split_description(report: Report) -> str:
    """The split as it is: the pictures actually set aside, and why they differ from the share asked for."""
    if report.split == "given":
        return "The validation pictures come from the data set's own validation folder."
    rows = list(report.counts.values())
    val = sum(row[VAL] for row in rows)
    total = sum(row[TRAIN] + row[VAL] for row in rows)
    if not total:
        return "No picture to split yet."
    shapes = {(row[VAL], row[TRAIN] + row[VAL]) for row in rows}
    if len(shapes) == 1:
        (kept, size), = shapes
        text = f"{kept:,} of the {plural(size, 'picture')} of each class {'is' if kept == 1 else 'are'} set aside"
    else:
        text = f"{val:,} of the {total:,} pictures ({percent(val / total, total)}) are set aside, per class as the table shows,"
    text += (f" for validation, drawn with seed {report.seed}; copies of one picture always land on the same side.")
    if abs(val / total - report.val_fraction) >= 0.05:
        text += (f" You asked for {percent(report.val_fraction, total)} of each class: with so few pictures every class keeps at "
                 "least one picture for validation and one for training, so the share differs.")
    return text


SMALL_CLASS = 10  # fewer pictures than this: a class is learnt badly and its validation moves in big steps
UNEVEN_RATIO = 1.5  # the largest class has this many times the pictures of the smallest: worth a sentence


def class_advice(report: Report) -> list[str]:
    """Before training: what to do about classes with too few pictures, or very uneven classes."""
    totals = {name: row[TRAIN] + row[VAL] for name, row in report.counts.items()}
    if len(totals) < 2:
        return []
    advice = []
    small = sorted((name for name, count in totals.items() if count < SMALL_CLASS), key=lambda n: (totals[n], n))
    if small:
        listed = ", ".join(f"{name} ({plural(totals[name], 'picture')})" for name in small[:6])
        more = f" and {len(small) - 6} more" if len(small) > 6 else ""
        advice.append(f"Too few pictures to learn from: {listed}{more} {'has' if len(small) == 1 else 'have'} fewer "
                      f"than {SMALL_CLASS}. A class this small is learnt from a handful of examples, and its few "
                      "validation pictures move the accuracy in big steps. Label more of these classes before "
                      "training; drop pictures without labels below and the suggestions say which to label first.")
    largest, smallest = max(totals.values()), min(totals.values())
    if largest - smallest >= 2 and largest >= UNEVEN_RATIO * max(1, smallest):
        fewest = sorted(name for name, count in totals.items() if count == smallest)
        advice.append(f"The classes are uneven: from {plural(smallest, 'picture')} ({', '.join(fewest[:4])}) to "
                      f"{plural(largest, 'picture')}. The studio compensates while training (each class weighs the "
                      "same), but a class with few pictures still has few examples to learn from: label more of "
                      f"{', '.join(fewest[:4])} first; the suggestions favour the classes with the fewest labels.")
    return advice


def render_advice(report: Report) -> None:
    for sentence in class_advice(report):
        st.warning(sentence, icon=":material/school:")


def render_thumbnails(report: Report) -> None:
    """A few small pictures per class, so a mislabelled folder shows at a glance."""
    if report.dataset is None:
        return
    by_class: dict[str, list] = defaultdict(list)
    for sample in report.dataset.samples:
        if len(by_class[sample.label]) < THUMBNAILS_PER_CLASS:
            by_class[sample.label].append(sample)
    for name in report.dataset.classes:
        pictures = [thumbnail_array(str(s.path), s.sha256) for s in by_class[name]]
        pictures = [p for p in pictures if p is not None]
        st.markdown(f"**{name}**")
        if pictures:
            st.image(pictures, width=THUMBNAIL_PIXELS)


def render_skipped(report: Report) -> None:
    if not report.skipped:
        return
    with st.expander(f"{plural(len(report.skipped), 'file')} left out, and why"):
        st.dataframe(
            [{"File": s.path, "Reason": s.reason, "Detail": s.detail} for s in report.skipped],
            hide_index=True,
        )


def render_duplicates(report: Report) -> None:
    if not report.duplicates:
        return
    with st.expander(f"{plural(len(report.duplicates), 'group')} of identical pictures"):
        rows = [
            {"Copies": ", ".join(group.files), "Problem": _DUPLICATE_TITLES.get(group.kind, group.kind)}
            for group in report.duplicates
        ]
        st.dataframe(rows, hide_index=True)


def picture_grid(pictures: list[Path], on_remove, *, columns: int = 8, limit: int = 48, key: str) -> None:
    """Thumbnails with a remove button under each; ``on_remove(file_name)`` runs on click."""
    shown = pictures[-limit:]
    for start in range(0, len(shown), columns):
        cells = st.columns(columns)
        for cell, path in zip(cells, shown[start : start + columns]):
            stat = path.stat()
            array = thumbnail_array(str(path), f"{stat.st_size}:{stat.st_mtime_ns}", 72)
            with cell:
                if array is not None:
                    st.image(array, width=72)
                st.button(
                    ":material/close:", key=f"{key}:{path.name}", help=f"Remove {path.name}", on_click=on_remove, args=(path.name,)
                )
    if len(pictures) > limit:
        st.caption(f"The latest {limit} of {len(pictures)} pictures are shown.")
