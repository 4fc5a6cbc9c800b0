"""What to train, as one validated, JSON-friendly object: :class:`TrainConfig`.

A run's ``config.json`` is ``TrainConfig.to_dict()``; the worker rebuilds it with
``TrainConfig.from_dict``. ``TrainConfig.for_method(method, **overrides)`` starts from the
settings that suit a transfer method (``transfer.models.catalogue.METHODS[...].defaults``) and
applies the user's choices on top. Every impossible value is refused with a sentence that
says what to change.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from transfer.core.errors import TransferError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
AUGMENTATIONS = ("none", "light", "strong")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_BACKBONE = "efficientnet_lite0"
TRAIN_JOB = "train"

# Keys a config.json may carry that are not settings of the training itself.
_BOOKKEEPING_KEYS = {"job", "world_size"}
MAX_NODES = 1024
MAX_PROCESSES_PER_NODE = 256
# A host name or an IPv4/IPv6 address, as torchrun's --master-addr takes it.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_\[\]-]{0,252}")


class ConfigError(TransferError):
    """A training setting that cannot work; the message says which and what to use instead."""


@dataclass
class TrainConfig:
    """Everything that decides what a training run does.

    ``dataset`` is either a path (a folder or a ``.zip``, split with ``val_fraction`` and
    ``split_seed`` when it has no ``val/`` folder) or the dict of ``Dataset.to_dict()``.
    """

    dataset: str | dict
    backbone: str = DEFAULT_BACKBONE
    method: str = "features"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_fraction: float = 0.1  # share of all steps spent warming up (cosine); one-cycle uses 0.25
    augmentation: str = "light"
    image_size: int | None = None  # None: the backbone's own input size
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4
    early_stopping_patience: int | None = None  # epochs without a lower validation loss
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bfloat16 autocast where the hardware runs it natively
    train_blocks: int | None = None  # fine-tuning: how many of the last backbone blocks learn (None: all)
    head_only_epochs: int = 0  # fine-tuning: train only the head for this many epochs first
    backbone_lr_mult: float | None = None  # None: the method's own (0.1 for fine-tuning)
    dropout: float = 0.0
    hidden: int | None = None
    probe_init: bool = True  # fine-tuning: start from a head trained on frozen features (LP-FT)
    freeze_batchnorm: bool = True  # fine-tuning: keep the pretrained BatchNorm statistics
    feature_views: int = 1  # feature transfer: the centre crop plus K-1 augmented views per training picture
    val_fraction: float = 0.2
    split_seed: int = 0
    momentum: float = 0.9  # SGD only
    initial_weights: dict | None = None  # start from these weights instead of the catalogue's (transfer.models.weights)
    # Distributed training through torchrun (transfer.runtime.launch): processes on this machine, machines
    # in all, this machine's place among them, and where node 0 listens (port 0: a free one, one machine only).
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    job: str = field(default=TRAIN_JOB)

    # ------------------------------------------------------------------ building

    @classmethod
    def for_method(cls, method: str = "features", **overrides) -> "TrainConfig":
        """The settings that suit ``method``, then ``overrides`` (``None`` values are ignored,
        so unset command-line options keep the method's defaults)."""
        from transfer.models.catalogue import get_method

        try:
            defaults = dict(get_method(method).defaults)
        except TransferError as error:
            raise ConfigError(str(error)) from None
        chosen = {k: v for k, v in overrides.items() if v is not None}
        if "dataset" not in chosen:
            raise ConfigError("Say which pictures to train on: give the data folder or zip.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(chosen) - known)
        if unknown:
            raise ConfigError(f"Unknown training setting(s): {', '.join(unknown)}.")
        config = cls(dataset=chosen["dataset"], method=method,
                     **{k: v for k, v in defaults.items() if k in known and k not in ("method", "dataset")})
        for key, value in chosen.items():
            setattr(config, key, value)
        config.image_size = _image_size_the_backbone_takes(config.backbone, config.image_size,
                                                           chosen=chosen.get("image_size"))
        config.validate()
        return config

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from its dict (a draft, a file someone wrote), checked: it is being built here."""
        return cls.from_saved(data).validate()

    @classmethod
    def from_saved(cls, data: dict) -> "TrainConfig":
        """A run's config as it was saved when the run was created. It was validated where it
        was built (the Configure and Train pages, the command line), so it is trusted: only its
        keys are checked, against the settings this version knows."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - _BOOKKEEPING_KEYS)
        if unknown:
            raise ConfigError(
                f"This run's settings contain {', '.join(unknown)}, which this version does not know; "
                "start a new run."
            )
        if "dataset" not in data:
            raise ConfigError("This run's settings do not say which pictures to train on; start a new run.")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return {**asdict(self), "world_size": self.world_size}

    @property
    def world_size(self) -> int:
        """Training processes over all machines; the batch size is the batch of all of them together."""
        return self.nproc_per_node * self.nnodes

    # ------------------------------------------------------------------ checking

    def validate(self) -> "TrainConfig":
        from transfer.models.catalogue import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"Unknown method '{self.method}': choose one of {', '.join(METHODS)}.")
        if not isinstance(self.dataset, (str, dict)) or not self.dataset:
            raise ConfigError("The data set must be a folder or zip path, or a checked data set.")
        _whole(self, "epochs", 1, 10_000)
        _whole(self, "batch_size", 1, 65_536)
        _whole(self, "seed", 0, 2**63 - 1)
        _whole(self, "split_seed", 0, 2**63 - 1)
        _whole(self, "feature_views", 1, 64)
        _whole(self, "head_only_epochs", 0, 10_000)
        _positive_real(self, "lr", upper=10.0)
        _real(self, "weight_decay", 0.0, 10.0)
        _real(self, "label_smoothing", 0.0, 0.99)
        _real(self, "dropout", 0.0, 0.99)
        _real(self, "val_fraction", 0.0, 1.0, open_ends=True)
        _real(self, "warmup_fraction", 0.0, 0.9)
        _real(self, "momentum", 0.0, 0.999)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "augmentation", AUGMENTATIONS)
        _choice(self, "device", DEVICES)
        _choice(self, "precision", PRECISIONS)
        for name in ("probe_init", "freeze_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{_label(name)} must be true or false, not {getattr(self, name)!r}.")
        if self.image_size is not None:
            _whole(self, "image_size", 16, 1024)
        if self.hidden is not None:
            _whole(self, "hidden", 1, 65_536)
        if self.train_blocks is not None:
            _whole(self, "train_blocks", 0, 10_000)
        if self.early_stopping_patience is not None:
            _whole(self, "early_stopping_patience", 1, 10_000)
        if self.backbone_lr_mult is not None:
            _real(self, "backbone_lr_mult", 0.0, 10.0)
        if self.head_only_epochs and self.method != "finetune":
            raise ConfigError("Head-only warm-up epochs only apply to fine-tuning; set them to 0 or choose finetune.")
        if self.head_only_epochs >= self.epochs:
            raise ConfigError(
                f"Head-only epochs ({self.head_only_epochs}) must be fewer than all epochs ({self.epochs})."
            )
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError("Name a backbone (see `transfer backbones`).")
        if self.initial_weights is not None:
            _initial_weights(self)
        _distribution(self)
        return self


def _image_size_the_backbone_takes(backbone: str, size: int | None, *, chosen: int | None) -> int | None:
    """``size``, unless the backbone takes one picture size only: then a method's default size
    gives way to the backbone's own (None), and a size someone chose is refused with a sentence."""
    from transfer.models.catalogue import get_backbone

    try:
        entry = get_backbone(backbone)
    except TransferError:
        return size  # an unknown backbone is reported where it is built
    if entry.accepts_image_size(size):
        return size
    if chosen is None:
        return None
    raise ConfigError(entry.image_size_refusal(chosen))


def _initial_weights(config) -> None:
    from transfer.models.weights import validate_spec

    problem = validate_spec(config.initial_weights)
    if problem:
        raise ConfigError(f"The starting weights {problem}; choose the weights file again.")
    if config.method == "scratch":
        raise ConfigError("Training from scratch starts from random weights, so it cannot start from your weights "
                          "file: choose feature transfer or fine-tuning, or leave out the weights.")


def _distribution(config) -> None:
    """The torchrun settings: each within its range, consistent with each other, and no more
    processes on this machine than it has GPUs (a CUDA run) or cores (a CPU run)."""
    _whole(config, "nproc_per_node", 1, MAX_PROCESSES_PER_NODE, label="Training processes per machine (nproc per node)")
    _whole(config, "nnodes", 1, MAX_NODES, label="The number of machines (nnodes)")
    _whole(config, "master_port", 0, 65_535, label="Master port (0: any free port)")
    node_rank = config.node_rank
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < config.nnodes:
        raise ConfigError(f"Node rank must be this machine's place among the {config.nnodes} machines, a whole "
                          f"number from 0 to {config.nnodes - 1} (0 on the machine at the master address), "
                          f"not {node_rank!r}.")
    if not isinstance(config.master_addr, str) or not _HOST.fullmatch(config.master_addr):
        raise ConfigError(f"Master address must be the host name or IP address of machine 0, "
                          f"such as 10.0.0.5, not {config.master_addr!r}.")
    if config.nnodes > 1 and config.master_port == 0:
        raise ConfigError("Several machines meet on a fixed port of machine 0: give the master port "
                          "(for example 29500), the same on every machine.")
    if config.batch_size < config.world_size:
        raise ConfigError(f"The batch size ({config.batch_size}) is the batch of all {config.world_size} training "
                          f"processes together, so it must be at least {config.world_size}.")
    if config.nproc_per_node > 1:
        _processes_fit_machine(config)


def _processes_fit_machine(config) -> None:
    from transfer.core import machine

    wanted = config.nproc_per_node
    if config.device == "mps":
        raise ConfigError("Several training processes run on CUDA GPUs or on the CPU, not on Apple's MPS "
                          "device: choose the cpu or cuda device, or 1 process per machine.")
    if machine.trains_on_gpus(config.device):
        gpus = machine.gpu_count()
        if gpus == 0:
            raise ConfigError("No CUDA GPU is visible on this machine; choose the cpu or auto device.")
        if wanted > gpus:
            raise ConfigError(f"This machine has {gpus} GPU{'s' if gpus != 1 else ''}, so at most {gpus} "
                              f"training processes fit on it (one per GPU), not {wanted}; choose {gpus} or "
                              f"fewer, or the cpu device.")
        return
    cores = machine.cpu_cores()
    if wanted > cores:
        raise ConfigError(f"This machine has {cores} CPU core{'s' if cores != 1 else ''}, so at most {cores} "
                          f"training processes fit on it, not {wanted}; choose {cores} or fewer.")


def _whole(config, name: str, low: int, high: int, label: str | None = None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{label or _label(name)} must be a whole number from {low} to {high}, not {value!r}.")


def _positive_real(config, name: str, upper: float) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= upper:
        raise ConfigError(f"{_label(name)} must be a number above 0 and at most {upper}, not {value!r}.")
    setattr(config, name, float(value))


def _real(config, name: str, low: float, high: float, open_ends: bool = False) -> None:
    value = getattr(config, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = low < value < high if open_ends else low <= value <= high
    if not ok:
        between = "strictly between" if open_ends else "from"
        joiner = "and" if open_ends else "to"
        raise ConfigError(f"{_label(name)} must be a number {between} {low} {joiner} {high}, not {value!r}.")
    setattr(config, name, float(value))


def _choice(config, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{_label(name)} must be one of {', '.join(choices)}, not {value!r}.")


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()
