"""Named projects: the unit of a person's work in the studio.

A project is the private folder a browser session works in (``TRANSFER_HOME/sessions/<token>``,
named by a server-issued token, see :mod:`transfer.runtime.access`) plus a small manifest::

    project.json   {"name", "created", "last_opened", "named", "thumbnail_source"}
    .thumbnail.jpg a small picture of the data set, made from ``thumbnail_source``
    dataset.json   the chosen data set (and its split), draft_config.json the settings
    uploads/       what was uploaded or built by hand, the pools of unlabelled pictures
    audit/working_copy/   the data set as corrected
    runs/          the training runs

Folders made before projects existed have no manifest: they read as "Untitled project, 6 Dec
2026" (the day of their oldest file) with everything in them. A folder that never held
anything (a visitor who opened a page and left) is no project: it is not listed, and the
clean-up removes it after a day (:func:`transfer.runtime.gc.collect`, which also owns
:func:`holds_work`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transfer.core import paths
from transfer.core.errors import TransferError
from transfer.core.runs import FINISHED, list_runs
from transfer.core.files import atomic_write_json, read_json
from transfer.data.discovery import find_data_root
from transfer.data.images import IMAGE_EXTENSIONS
from transfer.runtime import access
from transfer.runtime.gc import PROJECT_MANIFEST as MANIFEST_FILE
from transfer.runtime.gc import delete_session, holds_work, remove_tree

THUMBNAIL_FILE = ".thumbnail.jpg"
THUMBNAIL_PIXELS = 160
MAX_NAME_CHARS = 80
DATASET_FILE = "dataset.json"
SETTINGS_FILE = "draft_config.json"
RUNS_FOLDER = "runs"
UPLOADS_FOLDER = "uploads"
#: Folders a project rebuilds when it needs them (audit results, suggestions, job results): they
#: are not copied with a project, except the corrected data set kept under ``audit``.
REBUILT_FOLDERS = ("suggest", "jobs")
WORKING_COPY = Path("audit") / "working_copy"


class ProjectError(TransferError):
    """A project cannot be found, named or changed as asked; the message says why."""


@dataclass(frozen=True)
class Project:
    id: str  # the project's token: the name of its folder and the ``?s=`` of its link
    path: Path
    name: str
    created: float
    last_opened: float
    named: bool  # a person gave it its name (so it is kept even while empty)

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_FOLDER

    @property
    def uploads_dir(self) -> Path:
        return self.path / UPLOADS_FOLDER

    @property
    def thumbnail(self) -> Path | None:
        path = self.path / THUMBNAIL_FILE
        return path if path.is_file() else None


# --------------------------------------------------------------------------- names and dates


def day_label(timestamp: float) -> str:
    """``6 Dec 2026``: the day as people write it, in this computer's time zone."""
    moment = _dt.datetime.fromtimestamp(timestamp)
    return f"{moment.day} {moment:%b %Y}"


def untitled_name(created: float) -> str:
    return f"Untitled project, {day_label(created)}"


def clean_name(name: str) -> str:
    """A project name as stored: one line, spaces trimmed, at most :data:`MAX_NAME_CHARS` characters."""
    text = " ".join(str(name or "").split())
    text = "".join(ch for ch in text if ch.isprintable())
    if not text:
        raise ProjectError("A project needs a name: type a few words that say what it is about.")
    if len(text) > MAX_NAME_CHARS:
        raise ProjectError(f"That name has {len(text)} characters; a project name may have at most {MAX_NAME_CHARS}.")
    return text


# --------------------------------------------------------------------------- reading projects


def projects_root() -> Path:
    return access.sessions_root()


def project_path(project_id: str) -> Path:
    """The folder of an issued project token; a token this studio did not issue names no project."""
    if not access.is_issued_token(project_id):
        raise ProjectError("There is no such project on this studio; Home lists the projects you can open.")
    return projects_root() / project_id


def read_project(project_id: str) -> Project:
    """The project ``project_id`` as its manifest (or, for an older folder, its files) describe it."""
    path = project_path(project_id)
    if not path.is_dir():
        raise ProjectError("That project no longer exists; it may have been deleted in another tab.")
    return _project_at(path)


def _project_at(path: Path) -> Project:
    manifest = read_json(path / MANIFEST_FILE, default={})
    manifest = manifest if isinstance(manifest, dict) else {}
    created = _number(manifest.get("created")) or _oldest_time(path)
    name = manifest.get("name") if isinstance(manifest.get("name"), str) and manifest.get("name").strip() else None
    return Project(id=path.name, path=path, name=name or untitled_name(created), created=created,
                   last_opened=_number(manifest.get("last_opened")) or _newest_top_time(path),
                   named=bool(manifest.get("named")))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _oldest_time(path: Path) -> float:
    """When an older folder was started: the oldest modification time of what it holds."""
    times = [_mtime(path)] + [_mtime(child) for child in _children(path)]
    return min(t for t in times if t) if any(times) else time.time()


def _newest_top_time(path: Path) -> float:
    return max([_mtime(path)] + [_mtime(child) for child in _children(path)])


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def list_projects(only: list[str] | None = None, *, include: str | None = None) -> list[Project]:
    """The projects on this studio that hold work, last opened first.

    ``only``: just these project ids (the ones a browser knows, on a studio with a password).
    ``include``: a project listed even while still empty (the one open in this browser).
    """
    root = projects_root()
    wanted = None if only is None else set(only) | ({include} if include else set())
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or not access.is_issued_token(path.name):
            continue  # hidden trash of a delete, or a folder this studio did not name
        if wanted is not None and path.name not in wanted:
            continue
        if path.name == include or holds_work(path):
            found.append(_project_at(path))
    return sorted(found, key=lambda project: project.last_opened, reverse=True)


# --------------------------------------------------------------------------- changing projects


def _write_manifest(path: Path, **fields) -> None:
    current = read_json(path / MANIFEST_FILE, default={})
    current = current if isinstance(current, dict) else {}
    if "created" not in current:  # an older folder's first manifest keeps its dates
        current["created"] = _oldest_time(path)
    if "last_opened" not in current:
        current["last_opened"] = _newest_top_time(path)
    atomic_write_json(path / MANIFEST_FILE, {**current, **fields})


def new_project(name: str | None = None) -> Project:
    """A new, empty project; named (and so kept while empty) when ``name`` is given."""
    token = access.issue_session_token()
    path = access.session_dir(token)
    if name is not None:
        now = time.time()
        _write_manifest(path, name=clean_name(name), named=True, created=now, last_opened=now)
    return _project_at(path)


def rename_project(project_id: str, name: str) -> Project:
    path = read_project(project_id).path
    _write_manifest(path, name=clean_name(name), named=True)
    return _project_at(path)


def mark_opened(project_id: str) -> None:
    """Note that the project was opened now (for Home's order). A folder without work is left
    untouched, so a visit that makes nothing leaves nothing behind."""
    path = project_path(project_id)
    if path.is_dir() and holds_work(path):
        _write_manifest(path, last_opened=time.time())


def delete_project(project_id: str) -> int:
    """Delete a project with everything in it, its live demo links revoked first (see
    :func:`transfer.runtime.gc.delete_session`); the bytes freed. Refused while one of its runs is
    queued or running."""
    return delete_session(read_project(project_id).path)


def duplicate_project(project_id: str, name: str | None = None) -> Project:
    """A copy of a project under a new token: data, corrections, pools, settings and runs.
    Pictures are hard-linked where the file system allows; demo links stay with the original."""
    source = read_project(project_id)
    copy = new_project()
    try:
        _copy_work(source.path, copy.path)
        rewrite_paths(copy.path, {str(source.path): str(copy.path)})
        now = time.time()
        _write_manifest(copy.path, name=clean_name(name or f"{source.name} (copy)"), named=True,
                        created=now, last_opened=now, thumbnail_source=None)
    except BaseException:
        remove_tree(copy.path)
        raise
    return _project_at(copy.path)


def _copy_work(source: Path, target: Path) -> None:
    from transfer.serving.share import OWNER_FILE

    skipped = {OWNER_FILE, *REBUILT_FOLDERS}
    for child in _children(source):
        if child.name in skipped or child.name.startswith(".deleting-"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.copytree(child, target / child.name, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)
        elif child.is_file() and not child.is_symlink():
            shutil.copy2(child, target / child.name)


def _link_or_copy(source: str, target: str) -> None:
    # Pictures and weights never change in place (every write replaces the file), so a hard link is safe.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def rewrite_paths(folder: Path, replacements: dict[str, str]) -> None:
    """Point the JSON files of a copied project (the chosen data set, run configs, the working
    copy's state, the quota note) at the copy instead of the original."""
    for path in Path(folder).rglob("*.json"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        changed = _replace_in(data, replacements)
        if changed != data:
            atomic_write_json(path, changed)


def _replace_in(value, replacements: dict[str, str]):
    if isinstance(value, str):
        for old, new in replacements.items():
            if value == old or value.startswith(old + os.sep):
                return new + value[len(old):]
        return value
    if isinstance(value, list):
        return [_replace_in(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: _replace_in(item, replacements) for key, item in value.items()}
    return value


def find_project(name_or_id: str, only: list[str] | None = None) -> Project:
    """A project by its id or its exact name (for the command line); an ambiguous name is refused."""
    if access.is_issued_token(name_or_id) and project_path(name_or_id).is_dir():
        return read_project(name_or_id)
    matches = [p for p in list_projects(only) if p.name == name_or_id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ProjectError(f"There is no project called {name_or_id!r}; `transfer project list` names them.")
    ids = ", ".join(p.id[:8] + "…" for p in matches)
    raise ProjectError(f"{len(matches)} projects are called {name_or_id!r} ({ids}); rename one, or give its id "
                       "as `transfer project list` prints it.")


# --------------------------------------------------------------------------- what Home shows


@dataclass
class ProjectSummary:
    id: str
    name: str
    created: float
    last_opened: float
    dataset: str | None
    classes: int
    pictures: int
    runs: int
    finished_runs: int
    best_accuracy: float | None
    thumbnail: str | None
    best_shown: str | None = None  # the best run's accuracy as a count, "27 of 29 (93 %)", when it is known

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(project: Project) -> ProjectSummary:
    """One line of Home's list: the data set's classes and pictures, the runs and the best accuracy."""
    choice = read_json(project.path / DATASET_FILE, default={}) or {}
    source = choice.get("source") if isinstance(choice, dict) else None
    from transfer.analysis.trust import run_accuracy

    classes, pictures = count_pictures(Path(source)) if source and Path(source).is_dir() else ({}, 0)
    runs = list_runs(project.runs_dir)
    finished = [run for run in runs if run.state == FINISHED]
    scored = [(a, run) for run in finished
              if isinstance(a := run.status().get("best_val_accuracy"), (int, float))]
    best, best_run = max(scored, key=lambda pair: pair[0]) if scored else (None, None)
    counted = run_accuracy(best_run.path) if best_run is not None else None
    thumbnail = _thumbnail_for(project, classes)
    return ProjectSummary(project.id, project.name, project.created, project.last_opened,
                          choice.get("name") if isinstance(choice, dict) else None, len(classes), pictures,
                          len(runs), len(finished), best, str(thumbnail) if thumbnail else None,
                          counted.short() if counted else None)


def count_pictures(source: Path) -> tuple[dict[str, list[Path]], int]:
    """A data set folder's classes (each with its pictures, sorted) and picture count, by file
    name only (Home's summary; the data report checks the pictures themselves)."""
    source = find_data_root(source)  # a zip's lone enclosing folder is not a class
    splits = [child for child in _children(source) if child.is_dir() and child.name.lower() in
              ("train", "val", "valid", "validation", "test")]
    roots = splits or [source]
    classes: dict[str, list[Path]] = {}
    for root in roots:
        for folder in sorted(_children(root)):
            if folder.is_dir() and not folder.name.startswith("."):
                classes.setdefault(folder.name, []).extend(_pictures_under(folder))
    return {name: sorted(found) for name, found in classes.items() if found}, sum(len(f) for f in classes.values())


def _pictures_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(directory) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def _thumbnail_for(project: Project, classes: dict[str, list[Path]]) -> Path | None:
    """The project's small picture: the first picture of its first class, made once per source."""
    first = next((pictures[0] for pictures in classes.values() if pictures), None)
    made = project.path / THUMBNAIL_FILE
    if first is None:
        return None
    manifest = read_json(project.path / MANIFEST_FILE, default={}) or {}
    if made.is_file() and manifest.get("thumbnail_source") == str(first):
        return made
    from transfer.core.files import atomic_path
    from transfer.data.images import ImageError, thumbnail

    try:
        picture = thumbnail(first, size=THUMBNAIL_PIXELS)
        with atomic_path(made, durable=False) as temp:
            picture.convert("RGB").save(temp, "JPEG", quality=80)
    except (ImageError, OSError):
        return None
    _write_manifest(project.path, thumbnail_source=str(first))
    return made


# --------------------------------------------------------------------------- what a browser knows


BROWSERS_FOLDER = "browsers"
MAX_PROJECTS_PER_BROWSER = 1000


def new_browser_key() -> str:
    """A random key a browser keeps in a cookie, naming the list of projects it created or opened
    (on a studio with a password, Home lists only those)."""
    return secrets.token_urlsafe(32)


def _browser_file(key: str) -> Path:
    # The key is stored only as its digest: reading the folder hands out no keys.
    digest = hashlib.sha256(str(key).encode()).hexdigest()
    return paths.private_dir(paths.home() / BROWSERS_FOLDER) / f"{digest}.json"


def browser_projects(key: str | None) -> list[str]:
    """The ids of the projects the browser with ``key`` created or opened, most recent first;
    an unknown key (never handed out by this studio) knows none."""
    if not key:
        return []
    record = read_json(_browser_file(key), default={}) or {}
    ids = record.get("projects") if isinstance(record, dict) else None
    return [i for i in ids if access.is_issued_token(i)] if isinstance(ids, list) else []


def remember_in_browser(key: str, project_id: str) -> None:
    """Put ``project_id`` first in the browser's list."""
    known = [project_id] + [i for i in browser_projects(key) if i != project_id]
    atomic_write_json(_browser_file(key), {"projects": known[:MAX_PROJECTS_PER_BROWSER]})


def last_opened_project(only: list[str] | None = None) -> Project | None:
    """The project to open when the studio's address is typed without a link: the one opened
    last (of ``only``, when given)."""
    listed = list_projects(only)
    return listed[0] if listed else None
