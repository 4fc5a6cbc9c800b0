"""Starting a run from someone's own weights: a file, or a finished run of the studio.

A run that starts from its own weights records them in ``config.json`` as
``initial_weights``::

    {"name": "scans.safetensors", "sha256": "<64 hex>", "path": "<stored copy>",
     "source": "file" | "run", "run": "<run id, for a chained run>"}

and in ``model.json`` (which the model card reads) as ``initial_weights: {name, sha256,
source, run}``. The file itself is kept in the runs folder's content-addressed store,
``<runs folder>/.weights/<sha256><suffix>``, before the run is queued: the worker, a resume
and anyone reproducing the run read that copy, whatever happens to the original. The store
lies inside the runs folder, so in the web app it is part of the session's workspace (and of
its disk quota); list_runs ignores it (it has no ``config.json``).

Checking a file against a backbone (:func:`check_weights`) builds the architecture on the
meta device: it reads shapes only, costs no memory for parameters and initialises nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transfer.core.errors import TransferError

STORE_FOLDER = ".weights"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_UPLOAD_ENV = "TRANSFER_MAX_WEIGHTS_MB"
DEFAULT_MAX_UPLOAD_MB = 1024  # the web server's own upload limit (.streamlit/config.toml)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RUN_MODEL_FILE = "model.safetensors"
_RUN_INFO_FILE = "model.json"


class WeightsError(TransferError):
    """A weights file or run that cannot be a starting point; the message says why."""


@dataclass(frozen=True)
class InitialWeights:
    """Where a run's starting weights came from, and the stored copy it reads."""

    name: str
    sha256: str
    path: str
    source: str = "file"  # "file" or "run"
    run: str | None = None  # the run id, for a chained run

    def to_dict(self) -> dict:
        entry = {"name": self.name, "sha256": self.sha256, "path": self.path, "source": self.source}
        if self.run:
            entry["run"] = self.run
        return entry


def record(spec: dict) -> dict:
    """What ``model.json`` and the model card say about the starting weights (no local path)."""
    return {k: spec[k] for k in ("name", "sha256", "source", "run") if spec.get(k)}


def validate_spec(spec) -> str | None:
    """Why ``spec`` is not a valid ``initial_weights`` entry, or None when it is."""
    if not isinstance(spec, dict):
        return "must be a dictionary with name, sha256 and path"
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        return "needs the file's name"
    if not isinstance(spec.get("sha256"), str) or not _SHA256.fullmatch(spec["sha256"]):
        return "needs the file's SHA-256 (64 hexadecimal digits)"
    if not isinstance(spec.get("path"), str) or not spec["path"]:
        return "needs the path of the stored file"
    if spec.get("source", "file") not in ("file", "run"):
        return "has an unknown source"
    return None


# --------------------------------------------------------------------------- the store


def weights_store(runs_dir: Path | str) -> Path:
    path = Path(runs_dir) / STORE_FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if suffix in WEIGHTS_SUFFIXES else ".pt"


def store_file(source: Path | str, runs_dir: Path | str, *, name: str | None = None, origin: str = "file",
               run: str | None = None) -> InitialWeights:
    """Keep ``source`` in the store and describe it. A run's model (which the trainer only ever
    replaces, never rewrites in place) is hard-linked where possible; any other file is copied,
    since its owner may overwrite it."""
    source = Path(source)
    store = weights_store(runs_dir)
    handle, temp = tempfile.mkstemp(prefix=".tmp-", dir=store)
    os.close(handle)
    try:
        _link_or_copy(source, Path(temp), link=origin == "run")
        sha = file_sha256(temp)  # of the copy: what the run will read, even if the original changes now
        target = store / f"{sha}{_suffix(name or source.name)}"
        if not target.is_file():
            os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return InitialWeights(name or source.name, sha, str(target.resolve()), origin, run)


def _link_or_copy(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            target.unlink()
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed
            pass
    shutil.copyfile(source, target)


def store_bytes(data: bytes, name: str, runs_dir: Path | str) -> InitialWeights:
    """Keep uploaded bytes in the store; refuses files over the upload limit and other kinds of file."""
    from transfer.core.files import atomic_write_bytes

    check_upload(name, len(data))
    sha = hashlib.sha256(data).hexdigest()
    target = weights_store(runs_dir) / f"{sha}{_suffix(name)}"
    if not target.is_file():
        atomic_write_bytes(target, data)
    return InitialWeights(Path(name).name, sha, str(target.resolve()), "file")


def max_upload_bytes() -> int:
    raw = os.environ.get(MAX_UPLOAD_ENV, "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        megabytes = DEFAULT_MAX_UPLOAD_MB
    return int(max(megabytes, 1) * 1024 * 1024)


def check_upload(name: str, size: int) -> None:
    if Path(name).suffix.lower() not in WEIGHTS_SUFFIXES:
        raise WeightsError(f"'{name}' is not a weights file: upload a .safetensors, .pt or .pth file.")
    limit = max_upload_bytes()
    if size > limit:
        raise WeightsError(f"'{name}' is {size / 1e6:.0f} MB; weights files up to {limit / 1e6:.0f} MB can be "
                           "uploaded. Save the weights in half precision or as .safetensors, or train from the "
                           "command line (transfer train --weights FILE).")


# --------------------------------------------------------------------------- where weights come from


def run_backbone(run_dir: Path | str) -> str | None:
    """The backbone of a studio run folder (from its model.json), or None when it is not one."""
    import json

    try:
        info = json.loads((Path(run_dir) / _RUN_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info.get("backbone") if isinstance(info, dict) else None


def resolve_source(argument: str | Path) -> tuple[Path, str | None, str | None]:
    """``(weights file, backbone of the run, run id)`` for ``--weights FILE | RUN_DIR | RUN_DIR/model.safetensors``.

    The backbone and run id are None for a plain file."""
    path = Path(argument).expanduser()
    if not path.exists():
        raise WeightsError(f"{argument} does not exist: give a .safetensors / .pt / .pth file or a finished run's folder.")
    folder = path if path.is_dir() else path.parent
    backbone = run_backbone(folder)
    if path.is_dir():
        if backbone is None:
            raise WeightsError(f"{argument} is a folder but not a trained run of the studio (it has no "
                               f"{_RUN_INFO_FILE}); give a weights file or a run folder.")
        path = folder / _RUN_MODEL_FILE
        if not path.is_file():
            raise WeightsError(f"The run {folder.name} has no trained weights yet: wait until it has finished "
                               "an epoch, or choose another run.")
    is_run_model = backbone is not None and path.name == _RUN_MODEL_FILE
    return path.resolve(), backbone if is_run_model else None, folder.name if is_run_model else None


def chosen_backbone(requested: str | None, run_backbone_name: str | None, run_id: str | None) -> str | None:
    """The backbone to train: a chained run fixes it; asking for another one is refused."""
    if run_backbone_name is None:
        return requested
    if requested and requested != run_backbone_name:
        raise WeightsError(f"The run {run_id} was trained from {run_backbone_name}, so its weights only fit "
                           f"{run_backbone_name}, not {requested}: leave out --backbone or name {run_backbone_name}.")
    return run_backbone_name


def locate(spec: dict, runs_dir: Path | str | None = None) -> Path:
    """The stored file of ``spec``, checked against its SHA-256; looked for in ``runs_dir``'s store
    when the runs folder has moved since the run was created."""
    candidates = [Path(spec["path"])]
    if runs_dir is not None:
        candidates.append(Path(runs_dir) / STORE_FOLDER / Path(spec["path"]).name)
    for candidate in candidates:
        if candidate.is_file():
            if file_sha256(candidate) != spec["sha256"]:
                raise WeightsError(f"The stored copy of '{spec['name']}' has changed since the run was created; "
                                   "start a new run with the weights file.")
            return candidate
    raise WeightsError(f"The weights '{spec['name']}' this run starts from are no longer stored "
                       f"({candidates[0]}); start a new run with the weights file.")


# --------------------------------------------------------------------------- checking a file against a backbone


def meta_model(backbone: str, num_classes: int, *, dropout: float = 0.0, hidden: int | None = None):
    """The architecture with its new head, built on the meta device where it can be (shapes only)."""
    import torch

    from transfer.models.backbones import load_backbone
    from transfer.models.heads import replace_head

    try:
        with torch.device("meta"):
            model = load_backbone(backbone, pretrained=False)
            replace_head(model, num_classes, dropout=dropout, hidden=hidden)
        return model
    except NotImplementedError:  # an architecture whose construction computes on its tensors
        model = load_backbone(backbone, pretrained=False)
        replace_head(model, num_classes, dropout=dropout, hidden=hidden)
        return model


def check_weights(path: Path | str, backbone: str, num_classes: int, *, dropout: float = 0.0,
                  hidden: int | None = None, name: str | None = None):
    """The report of loading ``path`` into ``backbone`` with a head for ``num_classes``; raises
    :class:`transfer.models.backbones.WeightsDoNotFit` or ``UnsafeWeightsFile`` with a sentence."""
    from transfer.models.backbones import check_fit, match_weights, read_weights_shapes

    found = read_weights_shapes(path)  # first: an unsafe or unreadable file stops before any model is built
    model = meta_model(backbone, num_classes, dropout=dropout, hidden=hidden)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    head_path = model.transfer_head.path
    _, report = match_weights(own, found, head_path)
    check_fit(report, own, name or Path(path).name, backbone, head_path)
    return report
