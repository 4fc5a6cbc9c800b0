"""The training loop: one run directory in, events, status, a model and its evaluation out.

``train_run(run)`` is what the worker process calls. It reads ``run.config`` (a
:class:`transfer.config.TrainConfig`), trains, and writes into the run directory:

``labels.json``
    ``{"classes": [...]}``, the model's output order (written before the first epoch).
``model.json``
    How to rebuild the model for prediction: ``{"format": 1, "backbone", "method",
    "num_classes", "classes", "head": {"path", "in_features", "dropout", "hidden"},
    "image_size", "preprocessing": {"input_size", "resize_size", "mean", "std",
    "interpolation", "crop_pct"}}``, and ``initial_weights: {"name", "sha256", "source"}`` when
    the run started from its own weights file; read it with :func:`transfer.model_io.load_trained_model`.
``model.safetensors``
    The full state dict (backbone and new head) of the best epoch so far (highest validation
    accuracy, ties broken by lower validation loss).
``checkpoint.pt``
    The last finished epoch (weights, optimizer, random state, best so far); a resumed run
    continues after it. Read with ``torch.load(..., weights_only=True)``.
``val_predictions.json``
    For the evaluation page, from the best epoch: ``{"classes": [...], "epoch": n,
    "predictions": [{"path": "val/ants/1.jpg", "sha256": "...", "label": "ants",
    "predicted": "bees", "probabilities": [0.3, 0.7]}, ...]}``; ``path`` is relative to the
    data set's root when the picture lies inside it. ``probabilities`` follow ``classes``.
``val_metrics.json``
    ``{"epoch", "val_accuracy", "val_loss", "per_class": {label: {"accuracy", "correct",
    "count"}}, "confusion": [[count of true i predicted j]]}`` for the best epoch.

Events (``events.jsonl``): ``info`` and ``warning`` messages; ``progress`` before the first
epoch (``phase``: ``features`` while backbone features are computed, ``decode`` while pictures
are decoded, ``probe`` while the linear probe's features are computed; ``done``, ``total``,
``images_per_s``, ``elapsed``, ``eta``); ``step`` every few steps (``epoch``, ``epochs``, ``step``, ``steps``, ``loss``,
``accuracy``, ``lr``, ``images_per_s``, ``elapsed``, ``eta``); ``epoch`` after each epoch
(``epoch``, ``epochs``, ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
``best_val_accuracy``, ``lr``, ``images_per_s``, ``seconds``, ``elapsed``, ``eta``; ``loss``
and ``accuracy`` repeat the training figures); ``result`` at the end (best epoch, per-class
accuracy, file names). The worker adds the closing ``end`` event.

How each method trains: ``features`` computes (or reads from the cache) the backbone's
features once and trains only the head, single-threaded on the CPU, where such tiny steps are
fastest. ``finetune`` first fits the new head on frozen features (a linear probe, "LP-FT"),
keeps the pretrained BatchNorm statistics, and then trains head and backbone end to end from
the decoded uint8 pictures, augmented in batches on the device. ``scratch`` trains everything
from random weights. All three use the same epoch loop: learning rate set per step from the
schedule, loss and accuracy summed on the device, the batch halved on out-of-memory, a
checkpoint per epoch, the best epoch's weights kept.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfer.augment import augment_batch, eval_batch, get_preset, preprocessing_for, stack_squares
from transfer.backbones import Preprocessing, get_backbone
from transfer.cache import DecodedImageCache
from transfer.config import TrainConfig
from transfer.data import Dataset, load_dataset
from transfer.devices import DeviceError, DeviceSetup, is_out_of_memory, release_cached_memory, resolve_device
from transfer.errors import TransferError
from transfer.methods import create_model, get_method, prepare_model
from transfer.model_io import MODEL_INFO_FILE, model_info
from transfer.runs import FINISHED, Cancelled, RunDir, atomic_write_bytes, atomic_write_json

PREDICTIONS_FILE = "val_predictions.json"
METRICS_FILE = "val_metrics.json"
STEP_EVENT_SECONDS = 0.5  # at most about two step events a second: enough for a live chart
CPU_MICRO_BATCH = 16


class TrainingError(TransferError):
    """Training cannot go on; the message says what to change."""


def train_run(run: RunDir) -> None:
    """Train the run described by ``run.config``; see the module docstring for what it writes."""
    Trainer(run, TrainConfig.from_dict(run.config)).train()


# --------------------------------------------------------------------------- schedules


def lr_factor(schedule: str, progress: float, warmup_fraction: float = 0.1) -> float:
    """Multiplier of the base learning rate after ``progress`` (0..1) of all training.

    ``onecycle``: from 1/25 up to 1 over the first quarter, then a cosine down to 1/10,000
    (fastai's recipe). ``cosine``: linear warm-up over ``warmup_fraction``, then a cosine to 0.
    ``constant``: 1 after the same warm-up.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":
        peak = 0.25
        if progress < peak:
            return _cosine_between(1 / 25, 1.0, progress / peak)
        return _cosine_between(1.0, 1e-4, (progress - peak) / (1 - peak))
    if warmup_fraction > 0 and progress < warmup_fraction:
        return 0.01 + 0.99 * progress / warmup_fraction
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup_fraction) / max(1e-9, 1 - warmup_fraction)
    return _cosine_between(1.0, 0.0, rest)


def _cosine_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    for group in groups:
        group["base_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- what is trained on


class FeatureTask:
    """Feature transfer: only the head learns, on cached backbone features."""

    uses_amp = False
    micro_batch = None

    def __init__(self, head: nn.Module, train_features: torch.Tensor, val_features: torch.Tensor,
                 device: torch.device):
        self.module = head.to(device)
        self.train_features = train_features.to(device)  # (N, views, dim)
        self.val_features = val_features.to(device)  # (M, dim)
        self.views = train_features.shape[1]

    def train_mode(self, epoch: int) -> None:
        self.module.train()

    def forward_train(self, indices: torch.Tensor, epoch: int, generator: torch.Generator) -> torch.Tensor:
        # Every epoch sees one view of each picture, cycling through the augmented views.
        view = (epoch - 1) % self.views
        return self.module(self.train_features[indices.to(self.train_features.device), view])

    def val_logits(self, batch_size: int) -> torch.Tensor:
        self.module.eval()
        with torch.inference_mode():
            return self.module(self.val_features).float()


class ImageTask:
    """Fine-tuning and training from scratch: the whole model on (augmented) pictures."""

    uses_amp = True

    def __init__(self, model: nn.Module, config: TrainConfig, train_bank: torch.Tensor, val_bank: torch.Tensor,
                 prep: Preprocessing, setup: DeviceSetup):
        self.module = model.to(setup.device, memory_format=setup.memory_format())
        self.config = config
        self.train_bank = train_bank.to(setup.device)  # uint8 (N, S, S, 3), resident on the device
        self.val_bank = val_bank.to(setup.device)
        self.prep = prep
        self.spec = get_preset(config.augmentation)
        self.setup = setup
        self.plan = None
        self.plan_is_head_only: bool | None = None
        # On the CPU, 16 pictures at a time run as fast as more, and the activations kept for
        # the backward pass (most of the memory) shrink with the part size.
        self.micro_batch = CPU_MICRO_BATCH if setup.kind == "cpu" else None

    def all_trainable_groups(self) -> list[dict]:
        plan = prepare_model(self.module, self.config.method, lr=self.config.lr,
                             train_blocks=self.config.train_blocks, backbone_lr_mult=self.config.backbone_lr_mult)
        return plan.param_groups

    def train_mode(self, epoch: int) -> None:
        head_only = epoch <= self.config.head_only_epochs
        if head_only != self.plan_is_head_only:
            # Freezing works through requires_grad: frozen parameters get no gradient, and the
            # optimizer skips parameters without one.
            self.plan = prepare_model(self.module, self.config.method, lr=self.config.lr,
                                      train_blocks=0 if head_only else self.config.train_blocks,
                                      backbone_lr_mult=self.config.backbone_lr_mult)
            self.plan_is_head_only = head_only
        self.plan.train_mode()
        if self.config.method == "finetune" and self.config.freeze_batchnorm:
            # Pretrained statistics are estimated from millions of pictures; re-estimating them
            # from a few small batches of augmented crops only moves them away from what the
            # pretrained layers (and the probed head) expect. Scale and shift still learn.
            for module in self.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def forward_train(self, indices: torch.Tensor, epoch: int, generator: torch.Generator) -> torch.Tensor:
        images = self.train_bank[indices.to(self.train_bank.device)]
        with torch.no_grad():
            x = augment_batch(images, self.prep, self.spec, generator=generator)
        x = x.contiguous(memory_format=self.setup.memory_format())
        with self.setup.autocast():
            return self.module(x)

    def val_logits(self, batch_size: int) -> torch.Tensor:
        self.module.eval()
        out = []
        with torch.inference_mode(), self.setup.autocast():
            for start in range(0, self.val_bank.shape[0], batch_size):
                x = eval_batch(self.val_bank[start : start + batch_size], self.prep)
                out.append(self.module(x.contiguous(memory_format=self.setup.memory_format())).float())
        return torch.cat(out) if out else torch.empty(0)


# --------------------------------------------------------------------------- the trainer


@dataclass
class Best:
    accuracy: float = -1.0
    loss: float = math.inf
    epoch: int = 0
    min_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    probabilities: torch.Tensor | None = None
    state: dict | None = field(default=None, repr=False)  # feature transfer: the best head


class Trainer:
    def __init__(self, run: RunDir, config: TrainConfig):
        self.run = run
        self.config = config
        self.method = get_method(config.method)
        self.started = time.perf_counter()
        self.last_step_event = 0.0
        self.epoch_seconds: list[float] = []

    # ------------------------------------------------------------------ top level

    def train(self) -> None:
        self.prepare()
        start_epoch = self.restore_checkpoint() + 1
        if start_epoch == 1 and self.wants_linear_probe():
            self.linear_probe_head()
        threads = torch.get_num_threads()
        if isinstance(self.task, FeatureTask) and self.setup.kind == "cpu":
            # A head's steps take well under a millisecond on one core; spreading such tiny
            # operations over several threads costs more in synchronisation than it saves.
            torch.set_num_threads(1)
        try:
            self.epochs(start_epoch)
        except Cancelled:
            self.write_outputs()
            raise
        finally:
            torch.set_num_threads(threads)
        self.write_outputs()
        self.finish()

    def prepare(self) -> None:
        """Data, model, what trains on what, optimizer: everything before the first epoch."""
        config = self.config
        self.generator = seed_everything(config.seed)
        self.setup = resolve_device(config.device, config.precision)
        self.info(f"Training on {self.setup.describe()}.", device=str(self.setup.device))
        self.dataset = self.load_dataset()
        self.classes = list(self.dataset.classes)
        self.run.write_labels(self.classes)
        # The model card of an exported bundle reports the training data from this event.
        self.info(f"Data: {len(self.dataset.samples)} pictures in {len(self.classes)} classes.",
                  data_counts=self.dataset.counts())
        self.prep = preprocessing_for(get_backbone(config.backbone).preprocessing, config.image_size)
        self.train_samples, self.val_samples = self.dataset.train, self.dataset.val
        if not self.train_samples or not self.val_samples:
            raise TrainingError("Training needs pictures in both the training and the validation split; "
                                "add pictures or lower the validation fraction.")
        self.initial_weights = self.check_initial_weights()
        self.train_targets = torch.tensor([self.dataset.label_index(s.label) for s in self.train_samples])
        self.train_targets_on_device = self.train_targets.to(self.setup.device)
        self.val_targets = torch.tensor([self.dataset.label_index(s.label) for s in self.val_samples])
        self.batch_size = config.batch_size
        self.run.update_status(epochs=config.epochs, epoch=self.finished_epoch_on_disk(),
                               message="Preparing the data.", batch_size=self.batch_size)

        self._model: nn.Module | None = None
        self._model_future = None
        self.model_info_written = False
        self.task = None
        if self.method.caches_features:
            # Building the backbone (importing timm, reading weights) takes seconds; it overlaps
            # with decoding pictures, or, when every feature is cached, with training the head.
            self._model_future = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-backbone").submit(
                self.create_model)
            self.task = self.feature_task()
        if self.task is None:
            self.task = self.image_task()
        self.optimizer = make_optimizer(config, self.trainable_groups())
        self.scaler = self.setup.grad_scaler() if self.task.uses_amp else torch.amp.GradScaler("cpu", enabled=False)
        self.best = Best()
        self.samples_done = 0

    def load_dataset(self) -> Dataset:
        source = self.config.dataset
        if isinstance(source, dict):
            return Dataset.from_dict(source)
        return load_dataset(source, val_fraction=self.config.val_fraction, seed=self.config.split_seed)

    def finished_epoch_on_disk(self) -> int:
        return int(self.run.status().get("epoch") or 0) if self.run.checkpoint_path.exists() else 0

    # ------------------------------------------------------------------ tasks

    def check_initial_weights(self) -> Path | None:
        """The run's own starting weights, checked against the architecture before anything is
        built: the report goes into the event log, a file that does not fit ends the run here."""
        from transfer.weights import check_weights, locate

        spec = self.config.initial_weights
        if not spec:
            return None
        path = locate(spec, self.run.path.parent)
        report = check_weights(path, self.config.backbone, len(self.classes), dropout=self.config.dropout,
                               hidden=self.config.hidden, name=spec["name"])
        self.info(f"Starting from the weights in {spec['name']} (SHA-256 {spec['sha256'][:12]}...). "
                  + report.describe().replace("\n", " "), initial_weights=spec["name"],
                  weights_sha256=spec["sha256"], weights_report=report.to_dict())
        return path

    @property
    def weights_sha256(self) -> str | None:
        """Names the backbone's starting weights in the feature cache's key, when they are the run's own."""
        return self.config.initial_weights["sha256"] if self.config.initial_weights else None

    def create_model(self) -> nn.Module:
        config = self.config
        return create_model(config.backbone, len(self.classes), self.method, dropout=config.dropout,
                            hidden=config.hidden, initial_weights=self.initial_weights)

    @property
    def model(self) -> nn.Module:
        """The full model (backbone and new head); waits for it when it is built in the background."""
        if self._model is None:
            self._model = self._model_future.result() if self._model_future is not None else self.create_model()
            if not self.model_info_written:
                self.write_model_info()
        return self._model

    def feature_task(self) -> FeatureTask | None:
        """Head training on cached features; None when this architecture's head cannot be fed
        features (a convolutional head such as SqueezeNet's), so pictures are used instead."""
        from transfer.features import FeatureCache, extract_features

        config = self.config
        spec = get_preset(config.augmentation)
        views = list(range(config.feature_views if spec is not None else 1))
        started = time.perf_counter()
        total = len(self.train_samples) * len(views) + len(self.val_samples)

        def progress_from(offset: int):
            def report(done: int, _total: int, _seconds: float) -> None:
                self.progress_event("features", offset + done, total, time.perf_counter() - started)
            return report

        def load_model() -> nn.Module:
            if self.model.transfer_head.convolutional:
                raise _HeadNeedsPictures()
            return self.model

        common = dict(backbone=config.backbone, prep=self.prep, augmentation=config.augmentation, spec=spec,
                      setup=self.setup, load_model=load_model, batch_size=32,  # measured: 32 beats 64 on CPU caches
                      decoded=DecodedImageCache(), cache=FeatureCache(), should_stop=self.run.cancel_requested,
                      weights_sha256=self.weights_sha256,
                      on_batch_shrink=lambda n: self.warn(f"Out of memory while computing features; "
                                                          f"continuing {n} pictures at a time.", batch_size=n))
        self.progress_event("features", 0, total, 0.0)
        try:
            train_features, train_stats = extract_features(self.train_samples, views, progress=progress_from(0),
                                                           **common)
            val_features, val_stats = extract_features(self.val_samples, [0],
                                                       progress=progress_from(len(self.train_samples) * len(views)),
                                                       **common)
        except _HeadNeedsPictures:
            self.info("This backbone's head works on feature maps, so the frozen backbone runs on every batch.")
            return None
        computed, cached = train_stats.computed + val_stats.computed, train_stats.cached + val_stats.cached
        seconds = time.perf_counter() - started
        self.info(f"Backbone features: {computed} computed, {cached} from the cache, in {seconds:.1f} s.",
                  features_computed=computed, features_cached=cached, feature_seconds=round(seconds, 3),
                  feature_views=len(views))
        if self._model is not None:
            self._model.cpu()
        head = seeded_head(train_features.shape[-1], len(self.classes), config)
        if config.dropout > 0:
            _ = self.model  # dropout draws from the global generator: keep the background build out of its way
        return FeatureTask(head, train_features, val_features[:, 0], self.setup.device)

    def image_task(self) -> ImageTask:
        side = self.prep.resize_size
        decoded = DecodedImageCache()
        started = time.perf_counter()
        samples = self.train_samples + self.val_samples

        def report(done: int, total: int) -> None:
            if done == total or done % 64 == 0:
                self.progress_event("decode", done, total, time.perf_counter() - started)

        arrays = decoded.decode_all(samples, side, progress=report, interpolation=self.prep.interpolation)
        bank = stack_squares(arrays, side)
        del arrays
        decoded.clear_memory()
        self.info(f"Pictures ready: {decoded.decoded} decoded, {decoded.hits} from the cache, "
                  f"in {time.perf_counter() - started:.1f} s.", images_decoded=decoded.decoded,
                  images_cached=decoded.hits)
        n_train = len(self.train_samples)
        model = self.model
        self.write_model_info_once()
        return ImageTask(model, self.config, bank[:n_train], bank[n_train:], self.prep, self.setup)

    def wants_linear_probe(self) -> bool:
        return (self.config.method == "finetune" and self.config.probe_init and isinstance(self.task, ImageTask)
                and not self.model.transfer_head.convolutional)

    def linear_probe_head(self) -> None:
        """Fine-tuning starts from a trained head rather than a random one ("LP-FT"): a random
        head sends large, meaningless gradients into the pretrained layers in the first steps
        and distorts what they learned. The probe costs one backbone pass over the training
        pictures (cached for later runs) and a fraction of a second of head training."""
        from transfer.features import FeatureCache, extract_features

        started = time.perf_counter()
        features, stats = extract_features(
            self.train_samples, [0], backbone=self.config.backbone, prep=self.prep,
            augmentation=self.config.augmentation, spec=None, setup=self.setup, load_model=lambda: self.model,
            batch_size=32, cache=FeatureCache(), should_stop=self.run.cancel_requested,
            weights_sha256=self.weights_sha256,
            progress=lambda done, total, seconds: self.progress_event("probe", done, total, seconds))
        head = self.head()
        accuracy = fit_head_on_features(head, features[:, 0].to(self.setup.device), self.train_targets_on_device,
                                        seed=self.config.seed, single_thread=self.setup.kind == "cpu")
        self.info(f"New head initialised by a linear probe (training accuracy {accuracy:.3f}; "
                  f"{stats.computed} features computed, {stats.cached} cached) in "
                  f"{time.perf_counter() - started:.1f} s.", probe_train_accuracy=round(accuracy, 4),
                  probe_features_computed=stats.computed, probe_features_cached=stats.cached)

    def head(self) -> nn.Module:
        from transfer.heads import head_module

        return head_module(self.model)

    def write_model_info_once(self) -> None:
        if not self.model_info_written:
            self.write_model_info()

    def trainable_groups(self) -> list[dict]:
        if isinstance(self.task, FeatureTask):
            for param in self.task.module.parameters():
                param.requires_grad_(True)
            return [{"name": "head", "params": list(self.task.module.parameters()), "lr": self.config.lr}]
        return self.task.all_trainable_groups()

    # ------------------------------------------------------------------ epochs

    def epochs(self, start_epoch: int) -> None:
        config = self.config
        if start_epoch > config.epochs:
            return
        if start_epoch > 1:
            self.info(f"Resuming after epoch {start_epoch - 1}.", start_epoch=start_epoch)
        self.run.update_status(message=f"Epoch {start_epoch} of {config.epochs}.")
        for epoch in range(start_epoch, config.epochs + 1):
            begun = time.perf_counter()
            train_loss, train_accuracy, images_per_s = self.train_one_epoch(epoch)
            val_loss, val_accuracy, probabilities = self.validate()
            seconds = time.perf_counter() - begun
            self.epoch_seconds.append(seconds)
            improved = self.update_best(epoch, val_loss, val_accuracy, probabilities)
            stop_early = self.early_stopping(val_loss)
            eta = self.eta_after(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            # Event, then checkpoint, then status: a kill in between repeats the epoch on resume
            # but never loses a finished one.
            self.run.append_event({
                "type": "epoch", "epoch": epoch, "epochs": config.epochs,
                "train_loss": train_loss, "train_accuracy": train_accuracy,
                "loss": train_loss, "accuracy": train_accuracy,
                "val_loss": val_loss, "val_accuracy": val_accuracy,
                "best_val_accuracy": self.best.accuracy, "best_epoch": self.best.epoch, "improved": improved,
                "lr": lr, "images_per_s": round(images_per_s, 1), "seconds": round(seconds, 3),
                "elapsed": round(self.elapsed(), 3), "eta": round(eta, 1),
            })
            self.save_checkpoint(epoch, improved)
            self.run.update_status(epoch=epoch, step=None, val_accuracy=val_accuracy,
                                   best_val_accuracy=self.best.accuracy, best_epoch=self.best.epoch,
                                   eta=round(eta, 1), message=f"Epoch {epoch} of {config.epochs} done.")
            if stop_early:
                self.info(f"Stopped early after epoch {epoch}: the validation loss has not improved for "
                          f"{config.early_stopping_patience} epochs.", stopped_epoch=epoch)
                break

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        task, config = self.task, self.config
        task.train_mode(epoch)
        n = len(self.train_samples)
        order = torch.randperm(n, generator=self.generator)
        # Loss and hits add up on the device; reading them forces a GPU sync, so that happens
        # only when an event is written.
        total_loss = torch.zeros((), device=self.setup.device)
        correct = torch.zeros((), dtype=torch.long, device=self.setup.device)
        seen, cursor, step = 0, 0, 0
        begun = time.perf_counter()
        while cursor < n:
            if self.run.cancel_requested():
                raise Cancelled()
            indices = order[cursor : cursor + self.batch_size]
            progress = self.samples_done / (config.epochs * n)
            lr = set_learning_rate(self.optimizer, lr_factor(config.schedule, progress, config.warmup_fraction))
            try:
                loss, hits = self._train_step(indices, epoch)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(error):
                    raise
                self.shrink_batch()
                continue
            cursor += len(indices)
            seen += len(indices)
            self.samples_done += len(indices)
            step += 1
            total_loss += loss * len(indices)
            correct += hits
            last = cursor >= n
            if last or time.perf_counter() - self.last_step_event >= STEP_EVENT_SECONDS:
                mean_loss = checked_loss(float(total_loss) / seen)
                steps = step + math.ceil((n - cursor) / self.batch_size)
                self.step_event(epoch, step, steps, mean_loss, int(correct) / seen, lr,
                                seen / (time.perf_counter() - begun), cursor, n)
        return float(total_loss) / seen, int(correct) / seen, seen / max(1e-9, time.perf_counter() - begun)

    def _train_step(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the batch's mean loss and number of hits, as tensors.

        The batch may go through the model in parts (``task.micro_batch``), with gradients
        added up: the same step for the optimizer, a fraction of the activation memory.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.setup.device)
        hits = torch.zeros((), dtype=torch.long, device=self.setup.device)
        parts = indices.split(self.task.micro_batch or len(indices))
        for part in parts:
            targets = self.train_targets_on_device[part.to(self.setup.device)]
            logits = self.task.forward_train(part, epoch, self.generator)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
            self.scaler.scale(loss * (len(part) / len(indices))).backward()
            total_loss += loss.detach() * len(part)
            hits += (logits.detach().argmax(1) == targets).sum()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total_loss / len(indices), hits

    def shrink_batch(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        release_cached_memory(self.setup)
        if self.batch_size == 1:
            raise DeviceError("The device ran out of memory even with one picture per batch; choose a smaller "
                              "image size or backbone, or train on the CPU (--device cpu).")
        self.batch_size = max(1, self.batch_size // 2)
        self.warn(f"Out of memory: batch size halved to {self.batch_size}, retrying.", batch_size=self.batch_size)
        self.run.update_status(batch_size=self.batch_size)

    def validate(self) -> tuple[float, float, torch.Tensor]:
        logits = self.task.val_logits(self.batch_size).float().cpu()
        loss = float(F.cross_entropy(logits, self.val_targets))
        accuracy = float((logits.argmax(1) == self.val_targets).float().mean())
        return round(loss, 6), round(accuracy, 6), torch.softmax(logits, dim=1)

    def update_best(self, epoch: int, val_loss: float, val_accuracy: float, probabilities: torch.Tensor) -> bool:
        best = self.best
        better = val_accuracy > best.accuracy or (val_accuracy == best.accuracy and val_loss < best.loss)
        if better:
            best.accuracy, best.loss, best.epoch, best.probabilities = val_accuracy, val_loss, epoch, probabilities
            state = {k: v.detach().cpu().clone() for k, v in self.task.module.state_dict().items()}
            if isinstance(self.task, FeatureTask):
                best.state = state  # tiny: kept in memory and in the checkpoint, written at the end
            else:
                self.write_weights(state)
        return better

    def early_stopping(self, val_loss: float) -> bool:
        best = self.best
        if val_loss < best.min_val_loss:
            best.min_val_loss, best.epochs_without_improvement = val_loss, 0
        else:
            best.epochs_without_improvement += 1
        patience = self.config.early_stopping_patience
        return patience is not None and best.epochs_without_improvement >= patience

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, epoch: int, improved: bool) -> None:
        best = self.best
        checkpoint = {
            "format": 1,
            "epoch": epoch,
            "module": self.task.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "samples_done": self.samples_done,
            "batch_size": self.batch_size,
            "best": {"accuracy": best.accuracy, "loss": best.loss, "epoch": best.epoch,
                     "min_val_loss": best.min_val_loss, "epochs_without_improvement": best.epochs_without_improvement},
            "best_probabilities": best.probabilities,
            "best_state": best.state,
            "epoch_seconds": list(self.epoch_seconds),
        }
        path = self.run.checkpoint_path
        temp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, temp)
        temp.replace(path)

    def restore_checkpoint(self) -> int:
        """Load the last finished epoch if there is one; returns its number (0 if none)."""
        path = self.run.checkpoint_path
        if not path.exists():
            return 0
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged checkpoint must not make the run unrecoverable
            self.warn(f"The checkpoint could not be read ({error}); training starts again from epoch 1.")
            return 0
        self.task.module.load_state_dict(checkpoint["module"])
        self.task.train_mode(checkpoint["epoch"] + 1)  # so the optimizer's groups match the epoch
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.samples_done = int(checkpoint["samples_done"])
        self.batch_size = int(checkpoint["batch_size"])
        saved = checkpoint["best"]
        self.best = Best(saved["accuracy"], saved["loss"], saved["epoch"], saved["min_val_loss"],
                         saved["epochs_without_improvement"], checkpoint.get("best_probabilities"),
                         checkpoint.get("best_state"))
        self.epoch_seconds = list(checkpoint.get("epoch_seconds") or [])
        return int(checkpoint["epoch"])

    # ------------------------------------------------------------------ outputs

    def write_model_info(self) -> None:
        from transfer.weights import record

        self.model_info_written = True
        spec = self.config.initial_weights
        atomic_write_json(self.run.path / MODEL_INFO_FILE, model_info(
            self.model, backbone=self.config.backbone, method=self.config.method, classes=self.classes,
            preprocessing=self.prep, dropout=self.config.dropout, hidden=self.config.hidden,
            weights=self.run.weights_path.name, initial_weights=record(spec) if spec else None))

    def write_weights(self, module_state: dict) -> None:
        from safetensors.torch import save

        if isinstance(self.task, FeatureTask):
            self.head().load_state_dict(module_state)
            state = self.model.state_dict()
        else:
            state = module_state
        self.write_model_info_once()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write_bytes(self.run.weights_path, save(tensors, metadata={"format": "pt"}))

    def write_outputs(self) -> None:
        """Best weights (feature transfer), validation predictions and metrics, and a result event."""
        best = self.best
        if best.probabilities is None:
            return
        if isinstance(self.task, FeatureTask) and best.state is not None:
            self.write_weights(best.state)
        predicted = best.probabilities.argmax(1)
        root = Path(self.dataset.root)
        predictions = [
            {"path": _relative(sample.path, root), "sha256": sample.sha256, "label": sample.label,
             "predicted": self.classes[int(p)], "probabilities": [round(float(x), 6) for x in probs]}
            for sample, p, probs in zip(self.val_samples, predicted, best.probabilities)
        ]
        atomic_write_json(self.run.path / PREDICTIONS_FILE,
                          {"classes": self.classes, "epoch": best.epoch, "predictions": predictions})
        metrics = class_metrics(self.val_targets, predicted, self.classes)
        metrics.update(epoch=best.epoch, val_accuracy=best.accuracy, val_loss=best.loss)
        atomic_write_json(self.run.path / METRICS_FILE, metrics)
        self.run.append_event({"type": "result", "best_epoch": best.epoch, "best_val_accuracy": best.accuracy,
                               "per_class_accuracy": {k: v["accuracy"] for k, v in metrics["per_class"].items()},
                               "files": [self.run.weights_path.name, PREDICTIONS_FILE, METRICS_FILE,
                                         MODEL_INFO_FILE]})

    def finish(self) -> None:
        status = self.run.status()
        best = self.best
        message = (f"Finished: best validation accuracy {best.accuracy:.3f} at epoch {best.epoch}."
                   if best.epoch else "Finished.")
        self.run.update_status(state=FINISHED, ended_at=time.time(), eta=0, step=None, message=message,
                               epochs=status.get("epochs", self.config.epochs))

    # ------------------------------------------------------------------ events

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta_after(self, epoch: int) -> float:
        recent = self.epoch_seconds[-3:] or [0.0]
        return (self.config.epochs - epoch) * sum(recent) / len(recent)

    def step_event(self, epoch, step, steps, loss, accuracy, lr, images_per_s, cursor, n) -> None:
        self.last_step_event = time.perf_counter()
        per_image = 1.0 / max(images_per_s, 1e-9)
        recent = self.epoch_seconds[-3:]
        epoch_time = sum(recent) / len(recent) if recent else n * per_image
        eta = (n - cursor) * per_image + (self.config.epochs - epoch) * epoch_time
        self.run.append_event({
            "type": "step", "epoch": epoch, "epochs": self.config.epochs, "step": step, "steps": steps,
            "loss": round(loss, 6), "accuracy": round(accuracy, 6), "lr": lr,
            "images_per_s": round(images_per_s, 1), "elapsed": round(self.elapsed(), 3), "eta": round(eta, 1),
        })
        self.run.update_status(step=step, steps=steps, eta=round(eta, 1))

    def progress_event(self, phase: str, done: int, total: int, seconds: float) -> None:
        now = time.perf_counter()
        if 0 < done < total and now - self.last_step_event < STEP_EVENT_SECONDS:
            return
        self.last_step_event = now
        rate = done / seconds if seconds > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        self.run.append_event({"type": "progress", "phase": phase, "done": done, "total": total,
                               "images_per_s": round(rate, 1), "elapsed": round(self.elapsed(), 3),
                               "eta": None if eta is None else round(eta, 1)})

    def info(self, message: str, **fields) -> None:
        self.run.append_event({"type": "info", "message": message, **fields})

    def warn(self, message: str, **fields) -> None:
        self.run.append_event({"type": "warning", "message": message, **fields})


def checked_loss(loss: float) -> float:
    if not math.isfinite(loss):
        raise TrainingError("The loss became infinite or not a number: lower the learning rate (--lr) and "
                            "train again.")
    return loss


def fit_head_on_features(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, seed: int,
                         single_thread: bool = True) -> float:
    """Train ``head`` on fixed feature vectors with feature transfer's default settings (AdamW,
    one-cycle) and return its training accuracy. Used for fine-tuning's linear probe and for the
    data audit's cross-validated heads."""
    from transfer.methods import METHODS

    settings = METHODS["features"].defaults
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    epochs, batch, n = settings["epochs"], settings["batch_size"], inputs.shape[0]
    threads = torch.get_num_threads()
    if single_thread:
        torch.set_num_threads(1)  # tiny steps: see Trainer.train()
    try:
        head.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(inputs.device)
            for start in range(0, n, batch):
                indices = order[start : start + batch]
                factor = lr_factor("onecycle", (epoch * n + start) / (epochs * n))
                for group in optimizer.param_groups:
                    group["lr"] = settings["lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(inputs[indices]).float(), targets[indices]).backward()
                optimizer.step()
        head.eval()
        with torch.no_grad():
            return float((head(inputs).argmax(1) == targets).float().mean())
    finally:
        torch.set_num_threads(threads)


class _HeadNeedsPictures(Exception):
    """The head takes feature maps, not vectors: feature caching does not apply."""


def seeded_head(in_features: int, num_classes: int, config: TrainConfig) -> nn.Module:
    """The new head for feature transfer, initialised from the run's seed alone (the backbone is
    built in another thread that also draws random numbers, so the global generator is not
    reproducible here)."""
    from transfer.heads import make_head

    head = make_head(in_features, num_classes, dropout=config.dropout, hidden=config.hidden)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)  # nn.Linear's own default range
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return head


def class_metrics(targets: torch.Tensor, predicted: torch.Tensor, classes: list[str]) -> dict:
    """Per-class accuracy (recall) and the confusion matrix."""
    size = len(classes)
    confusion = torch.zeros(size, size, dtype=torch.long)
    for true, guess in zip(targets.tolist(), predicted.tolist()):
        confusion[true, guess] += 1
    per_class = {}
    for index, name in enumerate(classes):
        count = int(confusion[index].sum())
        correct = int(confusion[index, index])
        per_class[name] = {"accuracy": round(correct / count, 6) if count else None, "correct": correct,
                           "count": count}
    return {"per_class": per_class, "confusion": confusion.tolist()}


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
