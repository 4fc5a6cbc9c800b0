"""Demo links that keep the pictures visitors try, for the owner to label as a pool.

Off by default: the owner turns it on when sharing (``collect.json`` in the demo's folder) and
the demo page says so to visitors before they drop anything. Kept pictures go to the demo's
``collected/`` folder, one file per distinct picture (named by its SHA-256), within caps on
their number and bytes (``TRANSFER_DEMO_COLLECT_MAX_PICTURES``, default 500, and
``TRANSFER_DEMO_COLLECT_MAX_MB``, default 200); past a cap pictures are still predicted, not
kept. The folder is read like any pool (:func:`transfer.data.pool.pool_pictures`); revoking the
demo deletes it (:meth:`transfer.serving.share.DemoStore.revoke`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from transfer.data.images import ImageError, inspect_image
from transfer.core.quota import folder_bytes
from transfer.core.files import atomic_write_bytes, atomic_write_json, file_lock, read_json
from transfer.serving.share import COLLECT_LOCK, COLLECTED_FOLDER, DEMO_FILE

COLLECT_FILE = "collect.json"
DEFAULT_MAX_PICTURES = 500
DEFAULT_MAX_MB = 200
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
               "TIFF": ".tif", "PPM": ".ppm"}


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def enable(demo_folder: Path) -> dict:
    """Turn collecting on for the demo in ``demo_folder``, with the caps in force now."""
    settings = {"max_pictures": int(_env_number("TRANSFER_DEMO_COLLECT_MAX_PICTURES", DEFAULT_MAX_PICTURES)),
                "max_bytes": int(_env_number("TRANSFER_DEMO_COLLECT_MAX_MB", DEFAULT_MAX_MB) * 2**20)}
    atomic_write_json(Path(demo_folder) / COLLECT_FILE, settings)
    return settings


def settings_of(demo) -> dict | None:
    """The demo's collecting caps, or None when it does not collect (or was revoked)."""
    if demo.folder is None or demo.revoked_at is not None:
        return None
    settings = read_json(Path(demo.folder) / COLLECT_FILE, None)
    return settings if isinstance(settings, dict) else None


def collected_folder(demo) -> Path:
    return Path(demo.folder) / COLLECTED_FOLDER


def collected_count(demo) -> int:
    folder = collected_folder(demo)
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else 0


def keep_picture(demo, data: bytes) -> bool:
    """Keep a visitor's picture when the demo collects and its caps allow; True when kept (or kept before)."""
    settings = settings_of(demo)
    if settings is None:
        return False
    try:
        info = inspect_image(data)
    except ImageError:
        return False  # the page says why it cannot be used; nothing to keep
    folder = collected_folder(demo)
    target = folder / (hashlib.sha256(data).hexdigest() + _EXTENSIONS.get(info.format, ".png"))
    with file_lock(Path(demo.folder) / COLLECT_LOCK):
        if _revoked(demo):  # revoked while this picture was on its way: revoking holds this lock
            return False
        folder.mkdir(exist_ok=True)
        if target.exists():
            return True
        if collected_count(demo) >= int(settings.get("max_pictures", 0)):
            return False
        if folder_bytes(folder) + len(data) > int(settings.get("max_bytes", 0)):
            return False
        try:
            atomic_write_bytes(target, data)
        except OSError:
            return False  # a full disk costs the owner a picture, never the visitor an answer
    return True


def _revoked(demo) -> bool:
    record = read_json(Path(demo.folder) / DEMO_FILE)
    return not isinstance(record, dict) or record.get("revoked_at") is not None
