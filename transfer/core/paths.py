"""Where Transfer Studio keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of everything the studio stores: ``$TRANSFER_HOME``, else ``~/.transfer-studio``."""
    root = Path(os.environ.get("TRANSFER_HOME") or Path.home() / ".transfer-studio")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    """A content-keyed cache shared by all runs (decoded images, backbone features)."""
    path = home() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), created if missing.

    Used for what one visitor must not read of another's: session folders and the job queue.
    A folder made by an older version with wider permissions is tightened on the way.
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path
