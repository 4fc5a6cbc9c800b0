"""Everything before the first epoch: the data, the model, and what is trained on.

Feature transfer trains a head on backbone features computed once (and cached); when the
architecture's head takes feature maps rather than vectors, or for fine-tuning and training
from scratch, the whole model trains on pictures decoded once into a bank file on disk.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from transfer.data.augment import get_preset, preprocessing_for
from transfer.data.picture import Preprocessing
from transfer.models.backbones import get_backbone
from transfer.data.bank import open_or_build
from transfer.data.cache import DecodedImageCache
from transfer.training.config import TrainConfig
from transfer.data.dataset import load_dataset
from transfer.data.samples import Dataset
from transfer.core.devices import DeviceSetup
from transfer.models.methods import create_model
from transfer.training import TrainingError
from transfer.training.reporter import Reporter
from transfer.training.steps import fit_head_on_features
from transfer.training.tasks import FeatureTask, ImageTask, seeded_head

FEATURE_BATCH = 32  # pictures decoded at a time; the backbone takes them whole on a GPU, 8 at a time on the CPU


@dataclass
class TrainingData:
    dataset: Dataset
    classes: list[str]
    prep: Preprocessing
    train_samples: list
    val_samples: list
    train_targets: torch.Tensor  # class index per training picture, on the CPU
    val_targets: torch.Tensor


def load_training_data(config: TrainConfig) -> TrainingData:
    source = config.dataset
    if isinstance(source, dict):
        dataset = Dataset.from_dict(source)
    else:
        dataset = load_dataset(source, val_fraction=config.val_fraction, seed=config.split_seed)
    entry = get_backbone(config.backbone)
    if not entry.accepts_image_size(config.image_size):
        raise TrainingError(entry.image_size_refusal(config.image_size))  # a sentence, not the network's crash
    prep = preprocessing_for(entry.preprocessing, config.image_size)
    train, val = dataset.train, dataset.val
    return TrainingData(dataset, list(dataset.classes), prep, train, val,
                        torch.tensor([dataset.label_index(s.label) for s in train]),
                        torch.tensor([dataset.label_index(s.label) for s in val]))


def require_both_splits(data: TrainingData) -> None:
    if not data.train_samples or not data.val_samples:
        raise TrainingError("Training needs pictures in both the training and the validation split; "
                            "add pictures or lower the validation fraction.")


def check_initial_weights(config: TrainConfig, runs_dir: Path, num_classes: int, reporter: Reporter) -> Path | None:
    """The run's own starting weights, checked against the architecture before anything is
    built: the report goes into the event log, a file that does not fit ends the run here."""
    from transfer.models.weights import check_weights, locate

    spec = config.initial_weights
    if not spec:
        return None
    path = locate(spec, runs_dir)
    report = check_weights(path, config.backbone, num_classes, dropout=config.dropout, hidden=config.hidden,
                           name=spec["name"])
    reporter.info(f"Starting from the weights in {spec['name']} (SHA-256 {spec['sha256'][:12]}...). "
                  + report.describe().replace("\n", " "), initial_weights=spec["name"],
                  weights_sha256=spec["sha256"], weights_report=report.to_dict())
    return path


def initial_weights_sha256(config: TrainConfig) -> str | None:
    """Names the backbone's starting weights in the feature cache's key, when they are the run's own."""
    return config.initial_weights["sha256"] if config.initial_weights else None


class LazyModel:
    """The full model (backbone and new head), built on first use or in the background.

    Building a backbone (importing timm, reading weights) takes seconds; in the background it
    overlaps with decoding pictures or, when every feature is cached, with training the head.
    ``on_built`` runs once, with the model, when it is first handed out.
    """

    def __init__(self, create: Callable[[], nn.Module], on_built: Callable[[nn.Module], None], *, background: bool):
        self._create = create
        self._on_built = on_built
        self._model: nn.Module | None = None
        self._future = None
        if background:
            loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-backbone")
            self._future = loader.submit(create)
            loader.submit(_import_optimizer_machinery)
            loader.shutdown(wait=False)

    @property
    def built(self) -> bool:
        return self._model is not None

    def get(self) -> nn.Module:
        if self._model is None:
            self._model = self._future.result() if self._future is not None else self._create()
            self._on_built(self._model)
        return self._model

    def head(self) -> nn.Module:
        from transfer.models.heads import head_module

        return head_module(self.get())


def _import_optimizer_machinery() -> None:
    """Import what torch's optimizers import on their first step (``torch._dynamo``, 1.2-1.8 s
    on a 2-core CPU) while the pictures are decoded and the backbone works, rather than after.
    A warm worker has it already."""
    import torch._dynamo  # noqa: F401


def model_builder(config: TrainConfig, num_classes: int, initial_weights: Path | None) -> Callable[[], nn.Module]:
    from transfer.models.methods import get_method

    method = get_method(config.method)
    return lambda: create_model(config.backbone, num_classes, method, dropout=config.dropout, hidden=config.hidden,
                                initial_weights=initial_weights)


class _HeadNeedsPictures(Exception):
    """The head takes feature maps, not vectors: feature caching does not apply."""


def feature_task(config: TrainConfig, data: TrainingData, setup: DeviceSetup, model: LazyModel,
                 reporter: Reporter, should_stop: Callable[[], bool], extract: Callable) -> FeatureTask | None:
    """Head training on cached features; None when this architecture's head cannot be fed
    features (a convolutional head such as SqueezeNet's), so pictures are used instead.
    ``extract`` is :func:`transfer.models.features.extract_features` or its sharded form."""
    from transfer.models.features import ExtractionStats, FeatureCache

    spec = get_preset(config.augmentation)
    views = list(range(config.feature_views if spec is not None else 1))
    started = time.perf_counter()
    total = len(data.train_samples) * len(views) + len(data.val_samples)

    def progress_from(offset: int):
        def report(done: int, _total: int, _seconds: float) -> None:
            reporter.progress("features", offset + done, total, time.perf_counter() - started)
        return report

    def load_model() -> nn.Module:
        if model.get().transfer_head.convolutional:
            raise _HeadNeedsPictures()
        return model.get()

    # The disk copies of decoded pictures (for later runs) are written beside the backbone's work.
    decoded = DecodedImageCache(write_behind=True)
    common = dict(backbone=config.backbone, prep=data.prep, augmentation=config.augmentation, spec=spec,
                  setup=setup, load_model=load_model, batch_size=FEATURE_BATCH,
                  decoded=decoded, cache=FeatureCache(), should_stop=should_stop,
                  weights_sha256=initial_weights_sha256(config),
                  on_batch_shrink=lambda n: reporter.warn(f"Out of memory while computing features; "
                                                          f"continuing {n} pictures at a time.", batch_size=n))
    reporter.progress("features", 0, total, 0.0)
    try:
        if views == [0]:  # one pass over both splits: no pause between them, the backbone set up once
            every, train_stats = extract(data.train_samples + data.val_samples, views, progress=progress_from(0),
                                         **common)
            train_features, val_features = every[:len(data.train_samples)], every[len(data.train_samples):]
            val_stats = ExtractionStats()
        else:
            train_features, train_stats = extract(data.train_samples, views, progress=progress_from(0), **common)
            val_features, val_stats = extract(data.val_samples, [0],
                                              progress=progress_from(len(data.train_samples) * len(views)), **common)
    except _HeadNeedsPictures:
        reporter.info("This backbone's head works on feature maps, so the frozen backbone runs on every batch.")
        return None
    finally:
        decoded.flush()  # a forked worker may leave without joining the writer's thread
    computed, cached = train_stats.computed + val_stats.computed, train_stats.cached + val_stats.cached
    seconds = time.perf_counter() - started
    reporter.info(f"Backbone features: {computed} computed, {cached} from the cache, in {seconds:.1f} s.",
                  features_computed=computed, features_cached=cached, feature_seconds=round(seconds, 3),
                  feature_views=len(views))
    if model.built:
        model.get().cpu()
    head = seeded_head(train_features.shape[-1], len(data.classes), config)
    if config.dropout > 0:
        model.get()  # dropout draws from the global generator: keep the background build out of its way
    return FeatureTask(head, train_features, val_features[:, 0], setup.device)


def image_task(config: TrainConfig, data: TrainingData, setup: DeviceSetup, model: LazyModel,
               reporter: Reporter, task_class: Callable[..., ImageTask] = ImageTask) -> ImageTask:
    """The whole model on pictures, decoded once into a bank file (see :mod:`transfer.data.bank`)."""
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done == total or done % 64 == 0:
            reporter.progress("decode", done, total, time.perf_counter() - started)

    bank, stats = open_or_build(data.train_samples + data.val_samples, data.prep.resize_size,
                                data.prep.interpolation, progress=report)
    reporter.info(f"Pictures ready: {stats.decoded} decoded, {stats.cached} from the cache, "
                  f"in {stats.seconds:.1f} s.", images_decoded=stats.decoded, images_cached=stats.cached,
                  decode_seconds=round(stats.seconds, 3), bank_bytes=bank.nbytes)
    n_train = len(data.train_samples)
    return task_class(model.get(), config, bank.rows(0, n_train), bank.rows(n_train, len(bank)), data.prep, setup)


def build_task(config: TrainConfig, data: TrainingData, setup: DeviceSetup, model: LazyModel, reporter: Reporter,
               should_stop: Callable[[], bool], *, caches_features: bool, extract: Callable,
               image_task_class: Callable[..., ImageTask]) -> FeatureTask | ImageTask:
    task = feature_task(config, data, setup, model, reporter, should_stop, extract) if caches_features else None
    return task or image_task(config, data, setup, model, reporter, image_task_class)


def wants_linear_probe(config: TrainConfig, task, model: LazyModel) -> bool:
    return (config.method == "finetune" and config.probe_init and isinstance(task, ImageTask)
            and not model.get().transfer_head.convolutional)


def linear_probe_head(config: TrainConfig, data: TrainingData, setup: DeviceSetup, model: LazyModel,
                      reporter: Reporter, should_stop: Callable[[], bool], extract: Callable) -> None:
    """Fine-tuning starts from a trained head rather than a random one ("LP-FT"): a random
    head sends large, meaningless gradients into the pretrained layers in the first steps
    and distorts what they learned. The probe costs one backbone pass over the training
    pictures (cached for later runs) and a fraction of a second of head training."""
    from transfer.models.features import FeatureCache

    started = time.perf_counter()
    features, stats = extract(
        data.train_samples, [0], backbone=config.backbone, prep=data.prep, augmentation=config.augmentation,
        spec=None, setup=setup, load_model=model.get, batch_size=FEATURE_BATCH, cache=FeatureCache(),
        should_stop=should_stop, weights_sha256=initial_weights_sha256(config),
        progress=lambda done, total, seconds: reporter.progress("probe", done, total, seconds))
    accuracy = fit_head_on_features(model.head(), features[:, 0].to(setup.device), data.train_targets.to(setup.device),
                                    seed=config.seed, single_thread=setup.kind == "cpu")
    reporter.info(f"New head initialised by a linear probe (training accuracy {accuracy:.3f}; "
                  f"{stats.computed} features computed, {stats.cached} cached) in "
                  f"{time.perf_counter() - started:.1f} s.", probe_train_accuracy=round(accuracy, 4),
                  probe_features_computed=stats.computed, probe_features_cached=stats.cached)
