"""A run is a directory: the contract between the web app, the worker process and the command line.

Layout of one run directory (every file is written atomically or appended line by line, so a
reader never sees half a file and a crash never leaves a corrupt one)::

    config.json        what to train (written once, when the run is created)
    status.json        where the run stands: state, epoch, accuracy, pid, times, queue position
    events.jsonl       one JSON object per line: step, epoch, info, warning, end
    labels.json        {"classes": [...]} in the model's output order
    name.json          {"name": ...}: the name a person gave the run (else one is made from its
                       config, see transfer.models.run_names); the id stays the folder's name
    model.safetensors  the weights of the best (or last) finished epoch
    checkpoint.pt      what a resumed run continues from (read with weights_only=True)
    cancel             present when someone asked the run to stop
    worker.log         the worker process's own output, for post-mortems

Training also writes (see :mod:`transfer.training.run`):

    ``model.json``
        How to rebuild the model for prediction: ``{"format": 1, "backbone", "method",
        "num_classes", "classes", "head": {"path", "in_features", "dropout", "hidden"},
        "image_size", "preprocessing": {"input_size", "resize_size", "mean", "std",
        "interpolation", "crop_pct"}}``, and ``initial_weights: {"name", "sha256", "source"}`` when
        the run started from its own weights file; read it with :func:`transfer.models.model_io.load_trained_model`.
    ``val_predictions.json``
        For the evaluation page, from the best epoch: ``{"classes": [...], "epoch": n,
        "predictions": [{"path": "val/ants/1.jpg", "sha256": "...", "label": "ants",
        "predicted": "bees", "probabilities": [0.3, 0.7], "novelty": 0.12}, ...]}``; ``path`` is relative
        to the data set's root when the picture lies inside it. ``probabilities`` follow ``classes``;
        ``novelty`` (a finished run with a reference) is how unlike the training pictures it looks.
    ``novelty.safetensors``
        A finished run's "None of these" reference (transfer.models.novelty), named with its thresholds in
        ``model.json``'s ``"novelty"`` entry.
    ``val_metrics.json``
        ``{"epoch", "val_accuracy", "val_loss", "per_class": {label: {"accuracy", "correct",
        "count"}}, "confusion": [[count of true i predicted j]]}`` for the best epoch.
    ``rank-outcome.json``
        Only for a run trained by several processes (:mod:`transfer.training.distributed`, where rank 0
        alone writes all these files): ``{"state": "finished" | "cancelled" | "failed", "message"}``.

Events (``events.jsonl``): ``info`` and ``warning`` messages; ``progress`` before the first
epoch (``phase``: ``features`` while backbone features are computed, ``decode`` while pictures
are decoded, ``probe`` while the linear probe's features are computed; ``done``, ``total``,
``images_per_s``, ``elapsed``, ``eta``); ``step`` every few steps (``epoch``, ``epochs``, ``step``, ``steps``, ``loss``,
``accuracy``, ``lr``, ``images_per_s``, ``elapsed``, ``eta``); ``epoch`` after each epoch
(``epoch``, ``epochs``, ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
``best_val_accuracy``, ``lr``, ``images_per_s``, ``seconds``, ``elapsed``, ``eta``; ``loss``
and ``accuracy`` repeat the training figures); ``result`` at the end (best epoch, per-class
accuracy, file names). The worker adds the closing ``end`` event.

States: ``queued`` (waiting for a free slot), ``running``, then one of ``finished``,
``failed``, ``cancelled`` or ``interrupted`` (its worker died; the run can be resumed).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import secrets
import string
import time
from pathlib import Path
from typing import Iterable

from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_bytes, atomic_write_json, file_lock, read_json

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "finished",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE_STATES = frozenset({QUEUED, RUNNING})
ENDED_STATES = frozenset({FINISHED, FAILED, CANCELLED, INTERRUPTED})
RESUMABLE_STATES = frozenset({FAILED, CANCELLED, INTERRUPTED})

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
RANK_OUTCOME_FILE = "rank-outcome.json"  # a distributed run's rank 0 says how it ended
CANCEL_FILE = "cancel"
LOG_FILE = "worker.log"
NAME_FILE = "name.json"
WORKER_LOCK_FILE = ".worker.lock"
_STATUS_LOCK_FILE = ".status.lock"

_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_RANDOM_CHARS = 12  # 36**12 ~ 2**62: unguessable, so a run id can double as a private link
# Letters, digits, '.', '_' and '-', starting with a letter or digit: never a path separator,
# never '.' or '..', never hidden.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Cancelled(Exception):
    """Raised by the training code when it sees the cancel flag, after the last finished epoch
    has been saved; the worker turns it into the ``cancelled`` state."""


class InvalidRunId(TransferError):
    """A run id that could point outside the runs folder."""


class RunNotFound(TransferError):
    """No run with that id in the runs folder."""


class RunStateError(TransferError):
    """The run is in a state that does not allow what was asked (resume a finished run...)."""


# --------------------------------------------------------------------------- ids and atomic files


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS-<12 random [a-z0-9]>``: sorts by creation time, safe in any path,
    and hard to guess."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_RANDOM_CHARS))
    return f"{stamp}-{suffix}"


def is_safe_run_id(run_id: str) -> bool:
    return isinstance(run_id, str) and _SAFE_ID.fullmatch(run_id) is not None and ".." not in run_id


def _now() -> float:
    return round(time.time(), 3)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the run directory


class RunDir:
    """One run's folder. Cheap to create: every property reads the files on demand, so any
    number of processes (web app, worker, CLI) can hold a ``RunDir`` for the same run."""

    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def create(cls, runs_dir: Path | str, config: dict) -> "RunDir":
        """A new run folder with its config and a ``queued`` status."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = runs_dir / new_run_id()
            try:
                path.mkdir()
                break
            except FileExistsError:  # same second and same random suffix: practically never
                continue
        run = cls(path)
        atomic_write_json(run.path / CONFIG_FILE, dict(config))
        created = _now()
        atomic_write_json(
            run.path / STATUS_FILE,
            {"state": QUEUED, "created_at": created, "queued_at": created, "epoch": 0,
             "epochs": config.get("epochs"), "message": "Waiting to start."},
        )
        return run

    # ----------------------------------------------------------------- identity and config

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict:
        if self._config is None:
            config = read_json(self.path / CONFIG_FILE)
            if not isinstance(config, dict):
                raise RunNotFound(f"{self.path} is not a run folder (it has no readable {CONFIG_FILE}).")
            self._config = config
        return self._config

    def exists(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    # ----------------------------------------------------------------- status

    def status(self) -> dict:
        """The current status; ``{"state": ...}`` at least, whatever is on disk."""
        status = read_json(self.path / STATUS_FILE, default={})
        if not isinstance(status, dict):
            status = {}
        status.setdefault("state", QUEUED)
        return status

    @property
    def state(self) -> str:
        return self.status()["state"]

    def update_status(self, **fields) -> dict:
        """Merge ``fields`` into status.json (atomically, serialised across processes).
        A field set to ``None`` is removed. Returns the new status."""
        with self._status_lock():
            return self._write_merged(self.status(), fields)

    def transition(self, from_states: Iterable[str], with_event: dict | None = None, **fields) -> dict | None:
        """Merge ``fields`` only if the state is one of ``from_states`` (compare-and-set, so a
        cancel and a worker's start never overwrite each other). None when refused.

        ``with_event`` is appended to the events just before the status changes, so whoever
        sees the new state also finds the event (the ``end`` event of an ending run)."""
        with self._status_lock():
            status = self.status()
            if status["state"] not in set(from_states):
                return None
            if with_event is not None:
                self.append_event(with_event)
            return self._write_merged(status, fields)

    def _write_merged(self, status: dict, fields: dict) -> dict:
        for key, value in fields.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        atomic_write_json(self.path / STATUS_FILE, status)
        return status

    def _status_lock(self):
        return file_lock(self.path / _STATUS_LOCK_FILE)

    # ----------------------------------------------------------------- events

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    def append_event(self, event: dict) -> dict:
        """Append one event (a dict with a ``type``); adds ``time`` (unix seconds) when absent.
        One ``write`` of one line in append mode, so concurrent writers do not interleave."""
        if "type" not in event:
            raise ValueError("an event needs a 'type'")
        event = {"time": _now(), **event}
        line = json.dumps(event, default=_json_fallback, allow_nan=False) + "\n"
        with open(self.events_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
        return event

    def events(self, types: Iterable[str] | str | None = None) -> list[dict]:
        """All events, oldest first, optionally only those of the given type(s). A line that
        does not parse (the torn last line of a worker killed mid-write) is skipped."""
        events, _ = self.read_events(0)
        if types is None:
            return events
        wanted = {types} if isinstance(types, str) else set(types)
        return [e for e in events if e.get("type") in wanted]

    def read_events(self, offset: int = 0) -> tuple[list[dict], int]:
        """Events written since byte ``offset``, and the offset to pass next time. Only complete
        lines are consumed, so a line still being written is read on the next call."""
        try:
            with open(self.events_path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        complete = data.rfind(b"\n") + 1
        events = []
        for raw in data[:complete].splitlines():
            try:
                event = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
                events.append(event)
        return events, offset + complete

    def epoch_history(self) -> list[dict]:
        """One ``epoch`` event per epoch number, sorted; when an epoch was trained twice (the
        worker died after logging it but before its checkpoint), the later one wins."""
        by_epoch = {}
        for event in self.events("epoch"):
            if isinstance(event.get("epoch"), int):
                by_epoch[event["epoch"]] = event
        return [by_epoch[k] for k in sorted(by_epoch)]

    # ----------------------------------------------------------------- labels and files

    def write_labels(self, classes: list[str]) -> None:
        atomic_write_json(self.path / LABELS_FILE, {"classes": list(classes)})

    def labels(self) -> list[str] | None:
        data = read_json(self.path / LABELS_FILE)
        if isinstance(data, dict) and isinstance(data.get("classes"), list):
            return data["classes"]
        return None

    @property
    def given_name(self) -> str | None:
        """The name a person gave this run, or None."""
        data = read_json(self.path / NAME_FILE)
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) and name.strip() else None

    def set_name(self, name: str) -> None:
        atomic_write_json(self.path / NAME_FILE, {"name": name})

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def worker_lock_path(self) -> Path:
        return self.path / WORKER_LOCK_FILE

    # ----------------------------------------------------------------- cancel

    def request_cancel(self) -> None:
        """Ask the run to stop; any process may call this. The training loop checks the flag
        every step."""
        atomic_write_bytes(self.path / CANCEL_FILE, f"{_now()}\n".encode())

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL_FILE).exists()

    def cancel_requested_at(self) -> float | None:
        """When the run was last asked to stop (a Unix time), or None when it was not."""
        try:
            written = (self.path / CANCEL_FILE).read_text().strip()
            return float(written) if written else (self.path / CANCEL_FILE).stat().st_mtime
        except FileNotFoundError:
            return None
        except ValueError:  # not written by request_cancel: its file's time says when
            return (self.path / CANCEL_FILE).stat().st_mtime

    def clear_cancel(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / CANCEL_FILE).unlink()

    # ----------------------------------------------------------------- one line for tables

    def summary(self) -> dict:
        """What a table of runs shows: id, state, method, backbone, accuracy, duration."""
        status = self.status()
        try:
            config = self.config
        except RunNotFound:
            config = {}
        return {
            "id": self.id,
            "state": status["state"],
            "method": config.get("method", config.get("job")),
            "backbone": config.get("backbone"),
            "epoch": status.get("epoch"),
            "epochs": status.get("epochs", config.get("epochs")),
            "best_val_accuracy": status.get("best_val_accuracy"),
            "val_accuracy": status.get("val_accuracy"),
            "queue_position": status.get("queue_position"),
            "seconds": training_seconds(status),
            "created": _iso(status.get("created_at")),
            "message": status.get("message"),
            "run_dir": str(self.path),
        }


def training_seconds(status: dict) -> float | None:
    """Seconds spent training, over every attempt (a resumed run adds its earlier ones)."""
    earlier = status.get("earlier_seconds")
    started, ended = status.get("started_at"), status.get("ended_at")
    if started is None:
        return None if earlier is None else round(earlier, 1)
    if ended is None or status["state"] not in ENDED_STATES:
        ended = time.time()
    return round(max(0.0, ended - started) + (earlier or 0.0), 1)


def _json_fallback(value):
    # numpy scalars and tensors' .item() results, paths: the common non-JSON values in events
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- finding runs


def list_runs(runs_dir: Path | str) -> list[RunDir]:
    """Every run in ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    # Hidden folders are never runs: a run being deleted is renamed to one first.
    runs = [RunDir(p) for p in runs_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file()]

    def created(run: RunDir) -> tuple[float, str]:
        return (run.status().get("created_at") or 0.0, run.id)

    return sorted(runs, key=created, reverse=True)


def find_run(runs_dir: Path | str, run_id: str) -> RunDir:
    """The run called ``run_id`` in ``runs_dir``; ids that could name another folder are refused."""
    if not is_safe_run_id(run_id):
        raise InvalidRunId(
            f"{run_id!r} is not a run id: ids are letters, digits, '-', '_' and '.', "
            "as printed by `transfer runs`."
        )
    run = RunDir(Path(runs_dir) / run_id)
    if not run.exists():
        raise RunNotFound(
            f"There is no run {run_id!r} in {runs_dir}; `transfer runs --runs-dir {runs_dir}` lists the runs there."
        )
    return run
