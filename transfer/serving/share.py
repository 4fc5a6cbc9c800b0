"""Demo links: a read-only, revocable, expiring way to let anyone try one model.

A demo is a frozen snapshot of a finished run's model, kept in a folder of its own under
``$TRANSFER_HOME/demos/``, so retraining or deleting the run changes nothing. Its link carries
a token of 192 random bits (``secrets.token_urlsafe``); the folder is named by the token's
SHA-256, so listing the folder (or a backup of it) reveals no working link. Only the owner's
record (a session's ``demos.json``, or the command line's) holds the tokens themselves.

A demo folder holds ``demo.json`` (title, description, classes, accuracy, expiry, revocation),
``usage.json`` (pictures tried, and the times of the last minute's pictures for the rate cap)
and the model files: ``model.json``, ``model.safetensors``, ``labels.json``, the run's checked
ONNX export ``model.onnx`` (so visitors' pictures go through the fast predictor of
transfer.serving.predict, which picks it up) and, when the owner allows downloads, ``bundle.zip``
(transfer.serving.export). Revoking keeps ``demo.json`` and ``usage.json`` for the owner's list and
deletes the model.

Revoked, expired and unknown tokens raise the same :class:`DemoUnavailable` with the same
sentence, so a visitor cannot tell which tokens ever existed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from transfer.core.errors import TransferError
from transfer.core.paths import home
from transfer.core.runs import FINISHED, LABELS_FILE, RunDir
from transfer.core.files import atomic_write_json, file_lock, read_json

DEMOS_FOLDER = "demos"
DEMO_FILE = "demo.json"
USAGE_FILE = "usage.json"
OWNER_FILE = "demos.json"  # in a session's workspace (or the command line's folder): the tokens it created
BUNDLE_FILE = "bundle.zip"
ONNX_FILE = "model.onnx"  # the name transfer.serving.predict looks for in a folder: the fast path
INT8_ONNX_FILE = "model-int8.onnx"  # the smaller model, when it passed its check: the server answers with it
# What a demo's live camera sends to visitors' browsers when the owner keeps the novelty reference
# on the server (the default): the same model without it, so it answers classes only.
LIVE_ONNX_FILE = "live.onnx"
MODEL_FILES = ("model.json", "model.safetensors", LABELS_FILE)
NOVELTY_FILE = "novelty.safetensors"  # transfer.models.novelty's reference: copied when the run has one

TOKEN_BYTES = 24  # 192 random bits; the issue asks for at least 128
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")
_DEMO_ID = re.compile(r"[0-9a-f]{12,64}")
SHOWN_ID_CHARS = 12  # how much of the token's digest lists show: enough to name a demo, useless as a link

INVALID_LINK = "This demo link is not valid any more"

EXPIRY_CHOICES = {"1h": "1 hour", "1d": "1 day", "7d": "7 days", "30d": "30 days", "never": "never"}
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY_SECONDS = 366 * 86400
MAX_TITLE_CHARS = 120
MAX_DESCRIPTION_CHARS = 2000

# Limits for strangers, each overridable by an environment variable of the same name.
DEFAULT_PICTURES_PER_MINUTE = 30
DEFAULT_MAX_PICTURE_MB = 10
# Limits for owners: live demos per owner (each a copy of a model, served to anyone with the link).
DEFAULT_DEMOS_PER_OWNER = 10
COLLECTED_FOLDER = "collected"  # visitors' pictures kept for the owner (transfer.serving.demo_collect)
COLLECT_LOCK = ".collect.lock"  # held while a visitor's picture is kept, and while the demo is revoked
RATE_WINDOW_SECONDS = 60.0


class ShareError(TransferError):
    """A demo that cannot be created or changed, said as a sentence."""


class DemoUnavailable(ShareError):
    """Unknown, revoked or expired: deliberately one error with one sentence for all three."""

    def __init__(self):
        super().__init__(INVALID_LINK)


class DemoLimitReached(ShareError):
    """A picture refused by a demo's caps (pictures per minute, picture size)."""


# --------------------------------------------------------------------------- tokens and expiry


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The demo's folder name: the token's SHA-256. Tokens carry 192 random bits, so no salt is needed."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def is_token(text: str) -> bool:
    return isinstance(text, str) and _TOKEN.fullmatch(text) is not None


def parse_expiry(text: str | None) -> float | None:
    """Seconds until a demo expires, from ``"90m"``, ``"1h"``, ``"7d"``, ``"2w"``; ``None`` for ``"never"``."""
    text = (text or "never").strip().lower()
    if text == "never":
        return None
    match = re.fullmatch(r"(\d{1,6})\s*([mhdw])", text)
    if not match or int(match.group(1)) == 0:
        raise ShareError(f"'{text}' is not an expiry: write a number and a unit, such as 90m, 1h, 7d or 2w, "
                         "or 'never'.")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_EXPIRY_SECONDS:
        raise ShareError("A demo can last at most a year; choose a shorter expiry, or 'never'.")
    return float(seconds)


def _limit_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


# --------------------------------------------------------------------------- one demo


@dataclass
class Demo:
    """What ``demo.json`` holds, plus where the demo lives and how many pictures it has seen."""

    digest: str
    title: str
    description: str
    run_id: str
    classes: list[str]
    val_accuracy: float | None
    created_at: float
    expires_at: float | None
    allow_download: bool
    revoked_at: float | None = None
    pictures_tried: int = 0
    folder: Path | None = None
    strictness: str = "normal"  # when the demo says "None of these" (transfer.models.novelty.STRICTNESS)
    val_correct: int | None = None  # the run's validation accuracy as a count (transfer.analysis.trust)
    val_total: int | None = None
    unsure_margin: float | None = None  # below it an answer reads "not sure: a or b", measured on validation answers
    unsure_how: str = ""
    include_reference: bool = False  # whether visitors' devices get the novelty reference (live camera, bundle)

    @property
    def id(self) -> str:
        """A short name for lists and ``--revoke``; it cannot be turned back into the link."""
        return self.digest[:SHOWN_ID_CHARS]

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "live"

    @property
    def bundle_path(self) -> Path | None:
        path = self.folder / BUNDLE_FILE if self.folder else None
        return path if path is not None and path.is_file() else None

    @property
    def model_version(self) -> float:
        """Changes if the snapshot's weights ever change, for caches keyed by it."""
        try:
            return (self.folder / "model.safetensors").stat().st_mtime
        except (OSError, TypeError):
            return 0.0

    def record(self) -> dict:
        """The fields stored in ``demo.json`` (the usage count and the folder are kept elsewhere)."""
        fields = asdict(self)
        for key in ("pictures_tried", "folder", "digest"):
            fields.pop(key)
        return fields

    def to_dict(self, now: float) -> dict:
        return {"id": self.id, "state": self.state(now), **self.record(), "pictures_tried": self.pictures_tried}


# --------------------------------------------------------------------------- the store


class DemoStore:
    """Every demo of this studio, in ``root`` (default ``$TRANSFER_HOME/demos``).

    ``clock`` is injectable so tests can move time forward; limits default to the environment
    variables ``TRANSFER_DEMO_PICTURES_PER_MINUTE`` and ``TRANSFER_DEMO_MAX_PICTURE_MB``.
    Safe across threads and processes: usage is updated under a file lock.
    """

    def __init__(self, root: Path | str | None = None, *, clock: Callable[[], float] = time.time,
                 pictures_per_minute: int | None = None, max_picture_bytes: int | None = None):
        self.root = Path(root) if root is not None else home() / DEMOS_FOLDER
        self.clock = clock
        self.pictures_per_minute = int(pictures_per_minute or _limit_from_env(
            "TRANSFER_DEMO_PICTURES_PER_MINUTE", DEFAULT_PICTURES_PER_MINUTE))
        self.max_picture_bytes = int(max_picture_bytes or _limit_from_env(
            "TRANSFER_DEMO_MAX_PICTURE_MB", DEFAULT_MAX_PICTURE_MB) * 2**20)

    # ----------------------------------------------------------------- creating

    def create(self, run_dir: Path | str, *, title: str = "", description: str = "", expires: str | None = "7d",
               allow_download: bool = False, owner_record: Path | None = None,
               strictness: str = "normal", exports_in_child: bool = False,
               include_reference: bool = False, quota=None) -> tuple[str, Demo]:
        """Snapshot a finished run's model into a new demo; returns ``(token, demo)``.

        The snapshot is assembled in a hidden folder and renamed into place, so a half-copied
        demo is never served. ``owner_record`` (a ``demos.json``) gets the token appended.
        ``exports_in_child`` (the web server) makes missing exports in a child process only:
        an export that fails or takes too long there is never retried in this process.
        ``include_reference``: whether what reaches visitors' devices (the live camera's model, the
        bundle) carries the novelty reference. Without it (the default) "None of these" is judged
        on this server only, from the snapshot's own ``model.onnx``, which is never sent.
        An owner has at most ``TRANSFER_DEMOS_PER_OWNER`` live demos, and their files count against
        ``quota`` (the owner's transfer.core.quota.DiskQuota) with what the owner stores.
        """
        from transfer.analysis.trust import run_accuracy, run_unsure_margin
        from transfer.models.novelty import STRICTNESS

        if strictness not in STRICTNESS:
            raise ShareError(f"Strictness '{strictness}' is not one of {', '.join(STRICTNESS)}; choose one of those.")
        run = RunDir(run_dir)
        classes = self._check_run(run)
        expires_in = parse_expiry(expires)
        self._check_owner_limits(owner_record)
        now = self.clock()
        token = new_token()
        demo = Demo(digest=token_digest(token), title=_clean(title, MAX_TITLE_CHARS) or default_title(classes),
                    description=_clean(description, MAX_DESCRIPTION_CHARS), run_id=run.id, classes=classes,
                    val_accuracy=run.status().get("best_val_accuracy"), created_at=now,
                    expires_at=None if expires_in is None else now + expires_in, allow_download=bool(allow_download),
                    strictness=strictness, include_reference=bool(include_reference))
        accuracy, unsure = run_accuracy(run.path), run_unsure_margin(run.path)
        if accuracy is not None:
            demo.val_correct, demo.val_total = accuracy.correct, accuracy.total
        demo.unsure_margin, demo.unsure_how = unsure.margin, unsure.how
        self._ensure_root()
        staging = self.root / f".new-{demo.digest}"
        try:
            staging.mkdir(mode=0o700)
            for name in MODEL_FILES:
                shutil.copy2(run.path / name, staging / name)
            if (run.path / NOVELTY_FILE).is_file():
                shutil.copy2(run.path / NOVELTY_FILE, staging / NOVELTY_FILE)
            copy_exports(run, staging, allow_download, exports_in_child, bool(include_reference))
            if quota is not None and owner_record is not None:
                self._check_quota(quota, owner_record, staging)
            atomic_write_json(staging / DEMO_FILE, demo.record())
            atomic_write_json(staging / USAGE_FILE, {"pictures_tried": 0, "recent": []})
            os.replace(staging, self.root / demo.digest)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                raise ShareError(f"The demo could not be saved ({error.strerror or error}); free some disk space "
                                 "and try again.") from None
            raise
        demo.folder = self.root / demo.digest
        if owner_record is not None:
            remember_token(owner_record, token)
        return token, demo

    def _check_owner_limits(self, owner_record: Path | None) -> None:
        if owner_record is None:
            return
        limit = int(_limit_from_env("TRANSFER_DEMOS_PER_OWNER", DEFAULT_DEMOS_PER_OWNER))
        live = [demo for _, demo in self.owned(owner_record) if demo.state(self.clock()) == "live"]
        if len(live) >= limit:
            raise ShareError(f"You already have {len(live)} live demo links, the most one owner may have; revoke "
                             "one you no longer need, then share again.")

    def _check_quota(self, quota, owner_record: Path, staging: Path) -> None:
        from transfer.core.quota import QuotaExceeded, folder_bytes

        needed = folder_bytes(staging)
        held = sum(folder_bytes(demo.folder) for _, demo in self.owned(owner_record))
        try:
            quota.check(needed + held)
        except QuotaExceeded as refused:
            raise ShareError(f"{refused} (Your demos count too: they hold {_size(held)}.)") from None

    def _check_run(self, run: RunDir) -> list[str]:
        if not run.exists():
            raise ShareError(f"There is no run at {run.path}; give a run folder as listed by `transfer runs`.")
        if run.state != FINISHED:
            raise ShareError(f"Run {run.id} is {run.state}: only a finished run can be shared.")
        missing = [name for name in MODEL_FILES if not (run.path / name).is_file()]
        if missing:
            raise ShareError(f"Run {run.id} has no {', '.join(missing)}: its model cannot be shared; train it again.")
        classes = run.labels()
        if not classes:
            raise ShareError(f"Run {run.id} has no class names (labels.json is damaged); train it again.")
        return list(classes)

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # other accounts on the machine cannot list the demos either

    # ----------------------------------------------------------------- reading

    def _load(self, digest: str) -> Demo | None:
        folder = self.root / digest
        record = read_json(folder / DEMO_FILE)
        if not isinstance(record, dict):
            return None
        usage = read_json(folder / USAGE_FILE, {}) or {}
        try:
            return Demo(digest=digest, folder=folder, pictures_tried=int(usage.get("pictures_tried", 0)), **record)
        except TypeError:  # a demo.json written by another version: not served
            return None

    def open(self, token: str) -> Demo:
        """The live demo a visitor's token names; :class:`DemoUnavailable` for anything else."""
        demo = self._load(token_digest(token)) if is_token(token) else None
        if demo is None or demo.state(self.clock()) != "live":
            raise DemoUnavailable()
        return demo

    def find(self, token_or_id: str) -> Demo:
        """A demo in any state, by its token or by the id lists show (for the owner and ``--revoke``)."""
        text = (token_or_id or "").strip()
        if is_token(text):
            demo = self._load(token_digest(text))
            if demo is not None:
                return demo
        if _DEMO_ID.fullmatch(text):
            matches = [d for d in self.list() if d.digest.startswith(text)]
            if len(matches) == 1:
                return matches[0]
        raise ShareError(f"There is no demo '{text}'; `transfer share --list` shows the demos and their ids.")

    def list(self) -> list[Demo]:
        """Every demo, newest first, in any state."""
        if not self.root.is_dir():
            return []
        demos = [self._load(p.name) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted((d for d in demos if d is not None), key=lambda d: d.created_at, reverse=True)

    def owned(self, owner_record: Path) -> list[tuple[str, Demo]]:
        """``(token, demo)`` for each demo the owner's record names, newest first."""
        found = [(token, self._load(token_digest(token))) for token in remembered_tokens(owner_record)]
        return sorted(((t, d) for t, d in found if d is not None), key=lambda pair: pair[1].created_at, reverse=True)

    # ----------------------------------------------------------------- revoking

    def revoke(self, token_or_id: str) -> Demo:
        """End a demo now: its link stops working and its model files are deleted."""
        demo = self.find(token_or_id)
        with file_lock(demo.folder / COLLECT_LOCK):  # no picture is kept after this (demo_collect re-checks)
            if demo.revoked_at is None:
                demo.revoked_at = self.clock()
                atomic_write_json(demo.folder / DEMO_FILE, demo.record())
            self.revoke_files(demo)
        return demo

    @staticmethod
    def revoke_files(demo: Demo) -> None:
        for name in (*MODEL_FILES, NOVELTY_FILE, ONNX_FILE, INT8_ONNX_FILE, LIVE_ONNX_FILE, BUNDLE_FILE):
            (demo.folder / name).unlink(missing_ok=True)
        shutil.rmtree(demo.folder / COLLECTED_FOLDER, ignore_errors=True)

    def revoke_demos_of_owner(self, owner_record: Path) -> int:
        """Revoke every live demo an owner's record names (the owner is being deleted: nobody could
        revoke them afterwards); the number revoked."""
        revoked = 0
        for token, demo in self.owned(Path(owner_record)):
            if demo.state(self.clock()) == "live":
                self.revoke(token)
                revoked += 1
        return revoked

    def collect_ended(self) -> list[Demo]:
        """Delete the model files and kept pictures of demos that expired (revoking already did
        that); their records stay, so owners still see them as expired. The demos collected."""
        ended = []
        for demo in self.list():
            if demo.state(self.clock()) == "expired" and self.holds_files(demo):
                self.revoke_files(demo)
                ended.append(demo)
        return ended

    def holds_files(self, demo: Demo) -> bool:
        return any((demo.folder / name).exists() for name in (*MODEL_FILES, ONNX_FILE, COLLECTED_FOLDER))

    # ----------------------------------------------------------------- visitors' pictures

    def admit_picture(self, token: str, size: int) -> int:
        """Count one picture of ``size`` bytes against the demo's caps; returns the pictures tried so far.

        Raises :class:`DemoLimitReached` with a sentence when the picture is too large or this
        minute's pictures are used up, and :class:`DemoUnavailable` when the link is no longer valid.
        """
        demo = self.open(token)
        if size > self.max_picture_bytes:
            raise DemoLimitReached(f"That picture is {_size(size)}; this demo takes pictures up to "
                                   f"{_size(self.max_picture_bytes)}. Send a smaller one.")
        with file_lock(demo.folder / ".usage.lock"):
            usage = read_json(demo.folder / USAGE_FILE, {}) or {}
            now = self.clock()
            recent = [t for t in usage.get("recent", []) if now - t < RATE_WINDOW_SECONDS]
            if len(recent) >= self.pictures_per_minute:
                wait = max(1, int(RATE_WINDOW_SECONDS - (now - min(recent))) + 1)
                raise DemoLimitReached(f"This demo has had its {self.pictures_per_minute} pictures for this minute; "
                                       f"try again in {wait} seconds.")
            tried = int(usage.get("pictures_tried", 0)) + 1
            atomic_write_json(demo.folder / USAGE_FILE, {"pictures_tried": tried, "recent": recent + [now]})
        return tried


# --------------------------------------------------------------------------- owners' records


def revoke_demos_of_owner(owner_record: Path | str) -> int:
    """Revoke the live demos whose tokens an owner's record (``demos.json``) holds, before the owner
    (a session, a project) is deleted; the number revoked."""
    return DemoStore().revoke_demos_of_owner(Path(owner_record))


def remember_token(record: Path, token: str) -> None:
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(record.with_name(f".{record.name}.lock")):
        tokens = remembered_tokens(record)
        atomic_write_json(record, {"tokens": tokens + [token]})
    os.chmod(record, 0o600)  # the tokens are the links


def remembered_tokens(record: Path) -> list[str]:
    data = read_json(Path(record), {}) or {}
    tokens = data.get("tokens", []) if isinstance(data, dict) else []
    return [t for t in tokens if is_token(t)]


def command_line_record() -> Path:
    """Where ``transfer share`` keeps the tokens it created (the web app keeps them per session)."""
    return home() / "cli" / OWNER_FILE


# --------------------------------------------------------------------------- helpers


def default_title(classes: list[str]) -> str:
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return _clean(f"Which is it? {shown}", MAX_TITLE_CHARS)


def _clean(text: str | None, limit: int) -> str:
    """Strip control characters (not newlines) and cap the length."""
    text = "".join(ch for ch in (text or "") if ch in "\n\t" or ch.isprintable()).strip()
    return text[:limit]


def copy_bundle_without_run_id(source: Path, target: Path, run_id: str, name: str = "model") -> None:
    """Copy an export bundle for strangers: its folder and model card name the owner's run, which
    a visitor has no business knowing, so both say ``name`` instead. Entries keep their compression."""
    import zipfile

    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for entry in original.infolist():
            data = original.read(entry)
            if entry.filename.endswith(".md"):
                data = data.replace(f"run `{run_id}`".encode(), b"a shared demo").replace(run_id.encode(), b"model")
            if entry.filename.endswith("/model.json"):  # the source run and the uploaded file's name
                data = _without_initial_weights(data)
            entry.filename = entry.filename.replace(run_id, name, 1)
            copy.writestr(entry, data, compress_type=entry.compress_type)


def _without_initial_weights(model_json: bytes) -> bytes:
    import json

    info = json.loads(model_json)
    info.pop("initial_weights", None)
    return (json.dumps(info, indent=2) + "\n").encode()


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 // 10 else f"{max(1, round(count / 1024))} KB"


def demo_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/?demo={token}"


def public_base_url(default: str = "http://localhost:8501") -> str:
    """``TRANSFER_PUBLIC_URL`` (a studio behind a proxy) or ``default``."""
    return (os.environ.get("TRANSFER_PUBLIC_URL") or default).strip().rstrip("/")


def copy_exports(run: RunDir, folder: Path, with_bundle: bool, in_child: bool = False,
                 include_reference: bool = False) -> None:
    """Freeze the run's checked exports into the demo: ``model.onnx`` for fast predictions (a
    backbone that cannot be exported is predicted with PyTorch instead) and, for a demo that
    offers downloads, the bundle (then an export that fails is a sentence: no download is faked).
    ``in_child``: exports are made by a ``transfer export`` child, so this process never loads torch.
    Without ``include_reference`` the live camera's ``live.onnx`` and the bundle leave the novelty
    reference out (for a run that has none, ``model.onnx`` is already that model)."""
    from transfer.serving.export import ExportError, export_in_subprocess, export_run, served_onnx

    export = export_in_subprocess if in_child else export_run
    try:
        shutil.copy2(export(run.path, "onnx").path, folder / ONNX_FILE)  # float32, answered on this server
        served = served_onnx(run.path)
        if served is not None and served.name == INT8_ONNX_FILE:
            shutil.copy2(served, folder / INT8_ONNX_FILE)
        if not include_reference and (run.path / NOVELTY_FILE).is_file():
            shutil.copy2(export(run.path, "onnx", include_reference=False).path, folder / LIVE_ONNX_FILE)
        if with_bundle:
            bundle = export(run.path, "bundle", include_reference=include_reference).path
            copy_bundle_without_run_id(bundle, folder / BUNDLE_FILE, run.id)
    except ExportError as error:
        if with_bundle:
            raise ShareError(f"{error} The demo can still be shared without the download.") from None
