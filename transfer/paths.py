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
