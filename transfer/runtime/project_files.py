"""A whole project as one file: "Save project as a file" and "Open a project file".

The file is a zip::

    transfer-project.json   the manifest: format and format_version, the project's name and
                            dates, the folders its paths pointed at when saved, and every part
                            below with its size and SHA-256
    project/...             the project's folder: the chosen data set and settings (*.json),
                            uploads/ (pictures, pools, the classes built by hand),
                            audit/working_copy/ (the data set as corrected), and each finished
                            run's config, status, history, labels, weights (safetensors),
                            novelty reference, validation answers, name and model card
    data/...                the chosen data set's pictures, when they lie outside the project
                            (a folder a terminal trained on); the packaged demo data never travels

Exports, caches, checkpoints, audit results, job results and demo links stay out: they are
rebuilt when needed (a demo link belongs to the studio that made it).

Opening passes the gates an upload passes, and more: the file's size and entry count are
capped, every entry must be a part the manifest lists (no absolute paths, no ``..``, no links,
no hidden folders), parts may only be pictures, JSON, Markdown or safetensors (a ``.pt`` or any
other pickle is refused, nothing is ever unpickled), the declared sizes must fit the quota and
no part may shrink more than a zip bomb would, and each part must have its listed size and
SHA-256; safetensors headers are checked before the project is used. A newer format, or a
missing or damaged part, is refused with a sentence, and nothing is left behind: the project
is unpacked into a hidden folder and renamed into place only once whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transfer.core import paths
from transfer.core.errors import TransferError
from transfer.core.quota import SESSION_QUOTA_ENV, QuotaExceeded, check_free_space, human_size, session_quota_bytes
from transfer.core.runs import (CONFIG_FILE, EVENTS_FILE, FINISHED, LABELS_FILE, NAME_FILE, STATUS_FILE,
    list_runs)
from transfer.core.files import atomic_write_json, read_json
from transfer.data.archives import ZipLimits
from transfer.data.dataset import demo_dataset_path
from transfer.data.images import IMAGE_EXTENSIONS
from transfer.runtime import access, projects
from transfer.runtime.gc import OPENING_PREFIX, remove_tree
from transfer.serving.share import OWNER_FILE

FORMAT = "transfer-project"
FORMAT_VERSION = 1
MANIFEST_NAME = "transfer-project.json"
PROJECT_PREFIX = "project/"
DATA_PREFIX = "data/"
IMPORTED_DATA_FOLDER = "imported_data"
SUFFIX = ".transfer.zip"
MODEL_CARD_FILE = "model_card.md"
#: What a finished run carries into the file (weights only as safetensors; no checkpoint.pt).
RUN_FILES = (CONFIG_FILE, STATUS_FILE, EVENTS_FILE, LABELS_FILE, NAME_FILE, "model.safetensors", "model.json",
             "novelty.safetensors", "val_predictions.json", "val_metrics.json", MODEL_CARD_FILE)
_TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".md"})
_HIDDEN_KEPT = frozenset({".complete", ".upload.json", ".transfer-skipped.json"})  # an upload's markers
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib"})
_STORE = frozenset({*IMAGE_EXTENSIONS, ".safetensors"})  # already compressed or dense: stored as they are
_CHUNK = 1 << 20


class ProjectFileError(TransferError):
    """A project file cannot be saved or opened; the message says why and what to do."""


@dataclass
class Saved:
    path: Path
    bytes: int
    parts: int
    runs: int
    seconds: float


@dataclass
class Opened:
    project: projects.Project
    bytes: int
    parts: int
    runs: int
    seconds: float


# --------------------------------------------------------------------------- saving


def save_project(project_id: str, target: Path | str | None = None) -> Saved:
    """Write the project as one file (default: ``TRANSFER_HOME/cache/project-files/<name>.transfer.zip``)."""
    started = time.perf_counter()
    project = projects.read_project(project_id)
    parts, roots = _parts_of(project)
    target = Path(target) if target else _default_target(project)
    target.parent.mkdir(parents=True, exist_ok=True)
    listed = {}
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(temp, "w", allowZip64=True) as archive:
            for name, source in parts:
                listed[name] = _add_part(archive, name, source)
            for run in _finished_runs(project):
                card = _model_card(run.path)
                if card is not None:
                    name = f"{PROJECT_PREFIX}runs/{run.id}/{MODEL_CARD_FILE}"
                    archive.writestr(name, card, compress_type=zipfile.ZIP_DEFLATED)
                    listed[name] = {"bytes": len(card), "sha256": hashlib.sha256(card).hexdigest()}
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": project.name,
                        "created": project.created, "saved_at": time.time(), "roots": roots,
                        "runs": [run.id for run in _finished_runs(project)], "parts": listed}
            archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return Saved(target, target.stat().st_size, len(listed), len(manifest["runs"]), time.perf_counter() - started)


def _default_target(project: projects.Project) -> Path:
    stem = "-".join("".join(ch if ch.isalnum() else " " for ch in project.name).split())[:60] or "project"
    return paths.cache_dir("project-files") / project.id / f"{stem}{SUFFIX}"


def _finished_runs(project: projects.Project):
    return [run for run in list_runs(project.runs_dir) if run.state == FINISHED and run.weights_path.is_file()]


def _parts_of(project: projects.Project) -> tuple[list[tuple[str, Path]], dict]:
    """Every (name in the file, file on disk) to save, and the folders the project's paths name."""
    root = project.path
    parts = []
    for child in sorted(root.iterdir()):
        if child.is_file() and not child.is_symlink() and child.suffix == ".json" and child.name != OWNER_FILE:
            parts.append((PROJECT_PREFIX + child.name, child))
    parts += _tree_parts(root / projects.UPLOADS_FOLDER, root, PROJECT_PREFIX)
    parts += _tree_parts(root / projects.WORKING_COPY, root, PROJECT_PREFIX)
    for run in _finished_runs(project):
        for name in RUN_FILES:
            path = run.path / name
            if path.is_file() and not path.is_symlink():
                parts.append((f"{PROJECT_PREFIX}runs/{run.id}/{name}", path))
    roots = {"project": str(root), "demo_data": str(demo_dataset_path())}
    outside = _outside_data(project)
    if outside is not None:
        roots["data"] = str(outside)
        parts += _tree_parts(outside, outside, DATA_PREFIX)
    return [(name, path) for name, path in parts if _kind_problem(name) is None], roots


def _outside_data(project: projects.Project) -> Path | None:
    """The chosen data set's folder when it lies outside both the project and the demo data."""
    choice = read_json(project.path / projects.DATASET_FILE, default={}) or {}
    source = Path(str(choice.get("source") or "")) if isinstance(choice, dict) and choice.get("source") else None
    if source is None or not source.is_dir():
        return None
    resolved = source.resolve()
    for inside in (project.path.resolve(), demo_dataset_path().resolve()):
        if resolved.is_relative_to(inside):
            return None
    return source


def _tree_parts(folder: Path, base: Path, prefix: str) -> list[tuple[str, Path]]:
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and not (Path(directory) / d).is_symlink())
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            found.append((prefix + path.relative_to(base).as_posix(), path))
    return found


def _add_part(archive: zipfile.ZipFile, name: str, source: Path) -> dict:
    digest, size = hashlib.sha256(), 0
    method = zipfile.ZIP_STORED if PurePosixPath(name).suffix.lower() in _STORE else zipfile.ZIP_DEFLATED
    info = zipfile.ZipInfo(name, date_time=time.localtime(source.stat().st_mtime)[:6])
    info.compress_type = method
    info.external_attr = 0o600 << 16
    with open(source, "rb") as reading, archive.open(info, "w", force_zip64=True) as writing:
        while chunk := reading.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            writing.write(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _model_card(run_path: Path) -> bytes | None:
    from transfer.serving.model_card import render_model_card

    try:
        return render_model_card(run_path).encode("utf-8")
    except (TransferError, OSError, KeyError, ValueError):
        return None  # a card is a courtesy: the run travels without one


# --------------------------------------------------------------------------- opening


def open_project_file(source: Path | str | bytes, *, limits: ZipLimits = ZipLimits(),
                      quota_bytes: int | None = None) -> Opened:
    """Bring a project file in as a new project on this studio; see the module's description."""
    started = time.perf_counter()
    quota_bytes = session_quota_bytes() if quota_bytes is None else quota_bytes
    size = len(source) if isinstance(source, bytes) else _file_size(source)
    if size > limits.max_total_bytes:
        raise ProjectFileError(f"This project file is {size / 1e9:.1f} GB; at most {limits.max_total_bytes / 1e9:.1f} GB "
                               "can be opened.")
    token = access.issue_session_token()
    final = projects.projects_root() / token
    unpacking = projects.projects_root() / f"{OPENING_PREFIX}{token}"
    try:
        with _open_zip(source) as archive:
            manifest = _read_manifest(archive)
            entries = _check_entries(archive, manifest, limits, size)
            declared = sum(entry.file_size for entry in entries)
            if declared > quota_bytes:
                raise QuotaExceeded(
                    f"This project holds {human_size(declared)}, more than a project may store here "
                    f"({human_size(quota_bytes)}); ask the studio's operator for a larger quota ({SESSION_QUOTA_ENV}).")
            unpacking.mkdir(mode=0o700, parents=True)
            check_free_space(unpacking, declared, "the project file")
            for entry in entries:
                _extract(archive, entry, manifest["parts"][entry.filename], unpacking)
        _check_weights(unpacking)
        _point_paths_here(unpacking, manifest, final)
        _write_opened_manifest(unpacking, manifest)
        os.rename(unpacking, final)
    except BaseException:
        remove_tree(unpacking)
        raise
    project = projects.read_project(token)
    return Opened(project, size, len(manifest["parts"]), len(manifest.get("runs") or []), time.perf_counter() - started)


def _file_size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError as error:
        raise ProjectFileError(f"Cannot read {path}: {error.strerror or error}.") from None


def _open_zip(source) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ProjectFileError("This is not a project file (it is not a readable zip); choose a file saved with "
                               "\"Save project as a file\".") from None


def _read_manifest(archive: zipfile.ZipFile) -> dict:
    try:
        info = archive.getinfo(MANIFEST_NAME)
    except KeyError:
        raise ProjectFileError(f"This zip is not a project file: it has no {MANIFEST_NAME}. To bring pictures, "
                               "use the Data page instead.") from None
    if info.file_size > 64 * 1024**2:
        raise ProjectFileError("This project file's manifest is implausibly large; the file is damaged.")
    try:
        manifest = json.loads(archive.read(info))
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, OSError):
        raise ProjectFileError("This project file's manifest is damaged; save the project again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ProjectFileError("This zip is not a Transfer Studio project file.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ProjectFileError("This project file's manifest has no valid format version; the file is damaged.")
    if version > FORMAT_VERSION:
        raise ProjectFileError(f"This project file was saved by a newer Transfer Studio (format {version}; this "
                               f"studio reads format {FORMAT_VERSION} and older). Update the studio, then open it.")
    parts = manifest.get("parts")
    if not isinstance(parts, dict) or not all(isinstance(v, dict) for v in parts.values()):
        raise ProjectFileError("This project file's manifest lists no parts; the file is damaged.")
    return manifest


def _check_entries(archive: zipfile.ZipFile, manifest: dict, limits: ZipLimits, size: int) -> list[zipfile.ZipInfo]:
    entries = [e for e in archive.infolist() if e.filename != MANIFEST_NAME]
    if len(entries) > limits.max_entries:
        raise ProjectFileError(f"This project file has {len(entries)} parts; at most {limits.max_entries} can be opened.")
    declared = sum(e.file_size for e in entries)
    if declared > limits.max_total_bytes or declared > max(size, 1) * limits.max_archive_ratio:
        raise ProjectFileError("This project file would unpack to far more than its own size (like a zip bomb); "
                               "it was not opened.")
    names = set()
    for entry in entries:
        problem = _entry_problem(entry, manifest["parts"], limits)
        if problem:
            raise ProjectFileError(f"This project file cannot be opened: {entry.filename!r} {problem}.")
        names.add(entry.filename)
    missing = sorted(set(manifest["parts"]) - names)
    if missing:
        raise ProjectFileError(f"This project file is incomplete: {missing[0]!r}"
                               + (f" and {len(missing) - 1} more part(s) are" if len(missing) > 1 else " is")
                               + " missing. Save the project again from the studio it came from.")
    return entries


def _entry_problem(entry: zipfile.ZipInfo, parts: dict, limits: ZipLimits) -> str | None:
    name = entry.filename
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or ":" in path.parts[0] or ".." in path.parts or "" in name.split("/"):
        return "points outside the project"
    if entry.is_dir():
        return "is a folder entry, which project files do not have"
    if (entry.external_attr >> 16) & 0o170000 not in (0, 0o100000):
        return "is a link or a special file"
    if not name.startswith((PROJECT_PREFIX, DATA_PREFIX)):
        return "is not part of a project"
    if any(part.startswith(".") for part in path.parts[:-1]):
        return "lies in a hidden folder"
    if len(name.encode()) > limits.max_path_bytes or len(path.parts) > limits.max_depth:
        return "has a path too long or too deep"
    kind = _kind_problem(name)
    if kind:
        return kind
    if name not in parts:
        return "is not listed in the file's manifest"
    if entry.file_size != parts[name].get("bytes"):
        return "does not have the size the manifest lists (the file is damaged)"
    if entry.compress_size and entry.file_size / entry.compress_size > limits.max_ratio:
        return "shrinks far more than real data does (like a zip bomb)"
    return None


def _kind_problem(name: str) -> str | None:
    """Why a part of this name may not travel in a project file, or None."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return "is a pickled or raw PyTorch file; project files carry weights only as safetensors"
    if path.name.startswith(".") and path.name not in _HIDDEN_KEPT:
        return "is a hidden file"
    if suffix not in IMAGE_EXTENSIONS and suffix not in _TEXT_SUFFIXES and suffix != ".safetensors" \
            and path.name not in _HIDDEN_KEPT:
        return f"is a {suffix or 'suffix-less'} file, which project files do not carry"
    return None


def _extract(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, listed: dict, folder: Path) -> None:
    relative = entry.filename[len(PROJECT_PREFIX):] if entry.filename.startswith(PROJECT_PREFIX) \
        else f"{IMPORTED_DATA_FOLDER}/{entry.filename[len(DATA_PREFIX):]}"
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    try:
        with archive.open(entry) as reading, open(target, "xb") as writing:
            while chunk := reading.read(_CHUNK):
                written += len(chunk)
                if written > entry.file_size:
                    raise ProjectFileError(f"{entry.filename!r} is larger than its zip entry says; the file is damaged.")
                digest.update(chunk)
                writing.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error):  # a bad CRC or a torn entry; a full disk still says so
        raise ProjectFileError(f"{entry.filename!r} is damaged in this project file; save the project again.") from None
    if digest.hexdigest() != listed.get("sha256"):
        raise ProjectFileError(f"{entry.filename!r} is damaged in this project file (its content does not match "
                               "the manifest); save the project again.")


def _check_weights(folder: Path) -> None:
    """Every safetensors part must be a well-formed safetensors file (read with safetensors, never pickle)."""
    for path in folder.rglob("*.safetensors"):
        try:
            _check_safetensors(path)
        except ValueError as error:
            name = path.relative_to(folder).as_posix()
            raise ProjectFileError(f"The weights {name!r} in this project file are damaged ({error}); "
                                   "save the project again.") from None


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError("too short")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 * 1024**2):
            raise ValueError("header longer than the file")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("unreadable header") from None
    if not isinstance(header, dict):
        raise ValueError("unreadable header")
    end = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {key!r} has no valid place in the file")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise ValueError("its tensors do not fill the file")


def _point_paths_here(folder: Path, manifest: dict, final: Path) -> None:
    """The saved paths named the project's folder (and its data) on the studio that saved it."""
    roots = manifest.get("roots") if isinstance(manifest.get("roots"), dict) else {}
    replacements = {}
    if isinstance(roots.get("project"), str):
        replacements[roots["project"]] = str(final)
    if isinstance(roots.get("data"), str):
        replacements[roots["data"]] = str(final / IMPORTED_DATA_FOLDER)
    if isinstance(roots.get("demo_data"), str):
        replacements[roots["demo_data"]] = str(demo_dataset_path())
    replacements = {old: new for old, new in replacements.items() if old and old != os.sep}
    projects.rewrite_paths(folder, replacements)


def _write_opened_manifest(folder: Path, manifest: dict) -> None:
    name = manifest.get("name") if isinstance(manifest.get("name"), str) else ""
    try:
        name = projects.clean_name(name)
    except projects.ProjectError:
        name = "Opened project"
    now = time.time()
    created = manifest.get("created") if isinstance(manifest.get("created"), (int, float)) else now
    atomic_write_json(folder / projects.MANIFEST_FILE, {"name": name, "named": True, "created": created,
                                                        "last_opened": now})


SAVE_TIMEOUT_SECONDS = 1800.0


def save_in_child(project_id: str, target: Path | str | None = None) -> Path:
    """:func:`save_project` in a child process (the ``save-project`` job of
    :mod:`transfer.runtime.child_jobs`): the model cards need PyTorch, which the web server never
    loads, and a large project is no work for its threads. Returns the file's path; raises
    :class:`ProjectFileError` with a sentence."""
    import subprocess

    from transfer.core.child import run_child_job

    project = projects.read_project(project_id)
    target = Path(target) if target else _default_target(project)
    try:
        done = run_child_job("save-project", {"project": project.id, "output": str(target)},
                             timeout=SAVE_TIMEOUT_SECONDS, niced=True)
    except subprocess.TimeoutExpired:
        raise ProjectFileError("Saving the project took longer than 30 minutes and was stopped; try again when "
                               "the machine is less busy, or use `transfer project save`.") from None
    if "error" in done.answer:
        raise ProjectFileError(done.answer["error"])
    if done.returncode != 0 or "path" not in done.answer:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ProjectFileError(f"Saving the project stopped unexpectedly ({detail}); try again, or use "
                               "`transfer project save`.")
    return Path(done.answer["path"])
