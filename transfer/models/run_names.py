"""Names a person can read for runs: "Lite0 feature transfer, 6 Dec 21:42", or the name given.

A run's id (``20261206-214202-nwm2swumhvot``) stays its folder's name and the key in links; the
name is what pages, downloads and ``transfer runs`` show, and a person may change it.
"""

from __future__ import annotations

import datetime as _dt

from transfer.core.errors import TransferError
from transfer.core.runs import RunDir, RunNotFound
from transfer.models.catalogue import METHODS

MAX_RUN_NAME_CHARS = 80
_JOB_TITLES = {"lr_find": "Learning-rate finder", "audit": "Label check", "suggest": "Suggestions"}


class RunNameError(TransferError):
    """A run name that cannot be used; the message says why."""


def backbone_title(backbone: str | None) -> str:
    """The short name people use: ``efficientnet_lite0`` reads "Lite0", others keep their name."""
    if not backbone:
        return "Model"
    name = backbone.split("/")[-1]
    if name.startswith("efficientnet_lite"):
        return "Lite" + name[len("efficientnet_lite"):]
    return name


def default_run_name(config: dict, created_at: float | None) -> str:
    """``Lite0 feature transfer, 6 Dec 21:42`` from what the run trains and when it was made."""
    method = METHODS.get(config.get("method") or "")
    what = (f"{backbone_title(config.get('backbone'))} {method.title[0].lower()}{method.title[1:]}" if method
            else _JOB_TITLES.get(config.get("job") or "", backbone_title(config.get("backbone"))))
    if not created_at:
        return what
    moment = _dt.datetime.fromtimestamp(created_at)
    return f"{what}, {moment.day} {moment:%b %H:%M}"


def run_name(run: RunDir) -> str:
    """The run's given name, else its default one."""
    given = run.given_name
    if given:
        return given
    try:
        config = run.config
    except RunNotFound:
        config = {}
    return default_run_name(config, run.status().get("created_at"))


def rename_run(run: RunDir, name: str) -> str:
    """Give ``run`` a new name (one line, at most :data:`MAX_RUN_NAME_CHARS` characters); the name as stored."""
    text = "".join(ch for ch in " ".join(str(name or "").split()) if ch.isprintable())
    if not text:
        raise RunNameError("A run needs a name: type a few words that say what it is.")
    if len(text) > MAX_RUN_NAME_CHARS:
        raise RunNameError(f"That name has {len(text)} characters; a run name may have at most {MAX_RUN_NAME_CHARS}.")
    run.set_name(text)
    return text


def file_stem(name: str) -> str:
    """A run name as the start of a file name: ``Lite0-feature-transfer-6-Dec-21-42``."""
    stem = "-".join("".join(ch if ch.isalnum() else " " for ch in name).split())
    return stem[:80] or "model"


def distinct_labels(runs, label=run_name) -> dict[str, str]:
    """``{run id: label}`` for a picker: two runs with the same label (made the same minute with
    the same settings) get the end of their id after it, so each can be told apart and picked."""
    labels = {run.id: label(run) for run in runs}
    counts: dict[str, int] = {}
    for text in labels.values():
        counts[text] = counts.get(text, 0) + 1
    return {run_id: text if counts[text] == 1 else f"{text} · run …{run_id[-6:]}" for run_id, text in labels.items()}
