"""A session's corrected copy of a data set: the label fixes made after an audit, undoable.

The pictures a user brought (or the packaged demo) are never changed. The first fix
materialises a copy of the data set's folder tree under the session's workspace, with hard
links where the file system allows (no picture is stored twice) and copies elsewhere; fixes
then only rename entries *inside the copy*::

    <folder>/data/...            the corrected data set, laid out like the original
    <folder>/removed/<n>/<name>  pictures taken out (kept, so a removal can be undone)
    <folder>/state.json          {"original": source, "edits": [...]}

Each edit is ``{"id", "action": "move"|"remove"|"keep"|"add", "path", "to", "label", "new_label",
"sha256", "time"}`` with paths relative to the data set's root, so the paths of an audit made
on the original name the same pictures in the copy. An ``add`` brings a picture from outside
(a pool of unlabelled pictures, a corrected prediction) with an ``origin``; its side of the
split is fixed when it is added (``transfer.data.splits.PINNED_SPLITS``), so validation pictures never
change and runs before and after compare on the same ones. Pointing the session's chosen data set at
``<folder>/data`` makes the data report and the next training run use the corrected set.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from pathlib import Path

from transfer.data.discovery import VAL_FOLDER_NAMES
from transfer.data.samples import TRAIN, VAL, Dataset
from transfer.data.splits import PINNED_SPLITS, read_pinned_splits
from transfer.core.errors import TransferError
from transfer.core.files import atomic_write_bytes, atomic_write_json, file_lock, read_json

STATE_FILE = "state.json"
MOVE, REMOVE, KEEP, ADD = "move", "remove", "keep", "add"
_SPLIT_FOLDERS = {TRAIN, *VAL_FOLDER_NAMES}


EDIT_LOCK = ".edit.lock"


def one_edit_at_a_time(method):
    """Each edit reads, changes and writes the copy's JSON files under the copy's lock, so two tabs
    (or two server processes) editing at once cannot lose each other's edits."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        if not self.folder.is_dir():
            return method(self, *args, **kwargs)  # no copy yet: the method says so
        with file_lock(self.folder / EDIT_LOCK):
            return method(self, *args, **kwargs)

    return locked


class WorkingCopyError(TransferError):
    """A fix cannot be made or undone; the message says why."""


class WorkingCopy:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def state(self) -> dict:
        state = read_json(self.folder / STATE_FILE, None)
        return state if isinstance(state, dict) else {"original": None, "edits": []}

    @property
    def original(self) -> str | None:
        return self.state.get("original")

    @property
    def edits(self) -> list[dict]:
        return list(self.state.get("edits", []))

    def exists(self) -> bool:
        return self.data.is_dir() and (self.folder / STATE_FILE).is_file()

    def serves(self, source: Path | str) -> bool:
        """Whether ``source`` (a chosen data set) is this copy or the original it was made from."""
        source = str(Path(source))
        return self.exists() and source in (str(self.data), self.original)

    # ------------------------------------------------------------------ making it

    def materialise(self, dataset: Dataset, original: Path | str) -> Path:
        """A fresh copy of ``dataset``'s pictures (replacing any older copy); returns its root."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        staging = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        root = Path(dataset.root)
        for sample in dataset.samples:
            target = staging / "data" / _relative(sample.path, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                _link_or_copy(sample.path, target)
        (staging / "data").mkdir(parents=True, exist_ok=True)
        atomic_write_json(staging / STATE_FILE, {"original": str(original), "edits": []})
        os.replace(staging, self.folder)  # a half-made copy is never taken for a whole one
        return self.data

    def start_empty(self) -> Path:
        """A new, empty data set to fill with labelled pictures (replacing any older copy)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.data.mkdir(parents=True)
        atomic_write_json(self.folder / STATE_FILE, {"original": None, "edits": []})
        return self.data

    # ------------------------------------------------------------------ fixes

    @one_edit_at_a_time
    def move(self, path: str, new_label: str, *, label: str, sha256: str = "") -> dict:
        """File the picture at ``path`` (relative to the data root) under ``new_label`` instead."""
        source = self._existing(path)
        parts = list(Path(path).parts)
        prefix = parts[:1] if parts[0] in _SPLIT_FOLDERS and len(parts) >= 3 else []
        _check_class_name(new_label)
        folder = self.data.joinpath(*prefix, new_label)
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, source.name)
        os.rename(source, target)
        return self._record({"action": MOVE, "path": path, "to": target.relative_to(self.data).as_posix(),
                             "label": label, "new_label": new_label, "sha256": sha256})

    @one_edit_at_a_time
    def remove(self, path: str, *, label: str, sha256: str = "") -> dict:
        """Take the picture at ``path`` out of the data set (kept aside, so it can come back)."""
        source = self._existing(path)
        number = self._next_id()
        target = self.folder / "removed" / str(number) / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
        return self._record({"action": REMOVE, "path": path, "to": target.relative_to(self.folder).as_posix(),
                             "label": label, "new_label": None, "sha256": sha256}, number)

    @one_edit_at_a_time
    def keep(self, path: str, *, label: str, sha256: str = "") -> dict:
        """Note that the picture at ``path`` was looked at and is right as it is."""
        return self._record({"action": KEEP, "path": path, "to": path, "label": label, "new_label": label,
                             "sha256": sha256})

    @one_edit_at_a_time
    def add(self, picture: Path | bytes, label: str, *, name: str, split: str = TRAIN, origin: str = "") -> dict:
        """Add a picture from outside the data set (a file, or the bytes of one) under ``label``.

        ``split`` is where it goes: new pictures go to training, so the validation pictures
        earlier runs were measured on stay the same.
        """
        if not self.exists():
            raise WorkingCopyError("There is no working copy of the data set yet.")
        _check_class_name(label)
        data = picture if isinstance(picture, bytes) else Path(picture).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        pinned = read_pinned_splits(self.data)
        if sha256 in pinned:
            raise WorkingCopyError(f"{name} is in the data set already; undo its earlier label first to change it.")
        folder = self.data.joinpath(*self._split_prefix(split), label)
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, Path(name).name or "picture.jpg")
        if isinstance(picture, bytes):
            atomic_write_bytes(target, data)
        else:  # a pool picture of this session: linked, so it takes no more room
            _link_or_copy(Path(picture), target)
        atomic_write_json(self.data / PINNED_SPLITS, {**pinned, sha256: split})
        relative = target.relative_to(self.data).as_posix()
        return self._record({"action": ADD, "path": relative, "to": relative, "label": None, "new_label": label,
                             "sha256": sha256, "split": split, "origin": origin})

    @one_edit_at_a_time
    def freeze_split(self, dataset: Dataset) -> None:
        """Fix every picture of ``dataset`` (this copy, checked) on its current side of the split.

        Called before the first picture is added or corrected from outside: adding or moving a
        picture changes the draw of a class's validation pictures, so from then on each keeps its side.
        """
        pinned = read_pinned_splits(self.data)
        missing = {s.sha256: s.split for s in dataset.samples if s.sha256 not in pinned}
        if missing:
            atomic_write_json(self.data / PINNED_SPLITS, {**missing, **pinned})

    def added(self) -> dict[str, dict]:
        """The pictures added from outside, by SHA-256: what was labelled already."""
        return {edit["sha256"]: edit for edit in self.edits if edit["action"] == ADD}

    def _split_prefix(self, split: str) -> list[str]:
        """``train``/``val`` folders when the copy is laid out so; none when its split is drawn."""
        if not (self.data / TRAIN).is_dir():
            return []
        val_folder = next((name for name in VAL_FOLDER_NAMES if (self.data / name).is_dir()), None)
        if val_folder is None:
            return []
        return [TRAIN] if split != VAL else [val_folder]

    @one_edit_at_a_time
    def undo(self, edit_id: int) -> dict:
        """Reverse one edit: the picture goes back where it was."""
        state = self.state
        edit = next((e for e in state["edits"] if e["id"] == edit_id), None)
        if edit is None:
            raise WorkingCopyError("That change is not in the list any more.")
        if edit["action"] == ADD:
            (self.data / edit["to"]).unlink(missing_ok=True)
            pinned = read_pinned_splits(self.data)
            pinned.pop(edit["sha256"], None)
            atomic_write_json(self.data / PINNED_SPLITS, pinned)
        elif edit["action"] != KEEP:
            where = (self.data if edit["action"] == MOVE else self.folder) / edit["to"]
            back = self.data / edit["path"]
            if not where.is_file():
                raise WorkingCopyError(f"{edit['to']} was changed again since; undo the later change first.")
            if back.exists():
                raise WorkingCopyError(f"{edit['path']} is taken by another picture; it cannot go back there.")
            back.parent.mkdir(parents=True, exist_ok=True)
            os.rename(where, back)
        state["edits"] = [e for e in state["edits"] if e["id"] != edit_id]
        atomic_write_json(self.folder / STATE_FILE, state)
        return edit

    def decided(self) -> set[str]:
        """Paths (as the audit named them) that a fix or a "keep" already dealt with."""
        return {edit["path"] for edit in self.edits}

    # ------------------------------------------------------------------ helpers

    def _existing(self, path: str) -> Path:
        if not self.exists():
            raise WorkingCopyError("There is no working copy of the data set yet.")
        candidate = (self.data / path).resolve()
        if self.data.resolve() not in candidate.parents or not candidate.is_file():
            raise WorkingCopyError(f"{path} is not in the data set any more; check the labels again.")
        return candidate

    def _next_id(self) -> int:
        return max((e["id"] for e in self.edits), default=0) + 1

    def _record(self, edit: dict, number: int | None = None) -> dict:
        state = self.state
        edit = {"id": number or self._next_id(), **edit, "time": time.time()}
        state["edits"] = [*state.get("edits", []), edit]
        atomic_write_json(self.folder / STATE_FILE, state)
        return edit


VALIDATION_SHARE = 0.2


def split_for_new_label(train_count: int, val_count: int) -> str:
    """Where a newly labelled picture of a class goes, so about a fifth of the class validates.

    The second picture of a class is the first to validate (training needs one, measuring
    needs one); pictures already on either side never move.
    """
    total = train_count + val_count + 1
    wanted = max(1, round(total * VALIDATION_SHARE)) if total >= 2 else 0
    return VAL if val_count < wanted else TRAIN


def _check_class_name(label: str) -> None:
    """The upload rules for class names: a plain folder name, no control characters (a NUL would
    be an uncaught error, others unreadable), nothing skipped when a data set is read (``__MACOSX``,
    hidden names), not a split folder's name."""
    unusable = (not label or label.startswith(".") or Path(label).name != label or len(label) > 100
                or label.lower() in _SPLIT_FOLDERS or label.lower() == "__macosx"
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in label))
    if unusable:
        shown = "".join(ch if ch.isprintable() else "?" for ch in (label or ""))[:100]
        raise WorkingCopyError(f"'{shown}' cannot be a class name; use letters or digits, for example 'cat'.")


def _relative(path: Path, root: Path) -> Path:
    try:
        return Path(path).relative_to(root)
    except ValueError:
        return Path(Path(path).name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a real copy
        shutil.copy2(source, target)


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    counter = 2
    while target.exists():
        target = folder / f"{stem}-{counter}{suffix}"
        counter += 1
    return target
