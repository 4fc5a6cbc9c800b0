"""The training loop: one run directory in, events, status, a model and its evaluation out.

``train_run(run)`` is what the worker process calls. It reads ``run.config`` (a
:class:`transfer.training.config.TrainConfig`), trains, and writes into the run directory:

``labels.json``
    ``{"classes": [...]}``, the model's output order (written before the first epoch).
``model.json``
    How to rebuild the model for prediction: ``{"format": 1, "backbone", "method",
    "num_classes", "classes", "head": {"path", "in_features", "dropout", "hidden"},
    "image_size", "preprocessing": {"input_size", "resize_size", "mean", "std",
    "interpolation", "crop_pct"}}``, and ``initial_weights: {"name", "sha256", "source"}`` when
    the run started from its own weights file; read it with :func:`transfer.models.model_io.load_trained_model`.
``model.safetensors``
    The full state dict (backbone and new head) of the best epoch so far (highest validation
    accuracy, ties broken by lower validation loss).
``checkpoint.pt``
    The last finished epoch (weights, optimizer, random state, best so far); a resumed run
    continues after it. Read with ``torch.load(..., weights_only=True)``.
``val_predictions.json``
    For the evaluation page, from the best epoch: ``{"classes": [...], "epoch": n,
    "predictions": [{"path": "val/ants/1.jpg", "sha256": "...", "label": "ants",
    "predicted": "bees", "probabilities": [0.3, 0.7], "novelty": 0.12}, ...]}``; ``path`` is relative
    to the data set's root when the picture lies inside it. ``probabilities`` follow ``classes``;
    ``novelty`` (a finished run with a reference) is how unlike the training pictures it looks.
``novelty.safetensors``
    A finished run's "None of these" reference (transfer.models.novelty), named with its thresholds in
    ``model.json``'s ``"novelty"`` entry.
``val_metrics.json``
    ``{"epoch", "val_accuracy", "val_loss", "per_class": {label: {"accuracy", "correct",
    "count"}}, "confusion": [[count of true i predicted j]]}`` for the best epoch.
``rank-outcome.json``
    Only for a run trained by several processes (:mod:`transfer.training.distributed`, where rank 0
    alone writes all these files): ``{"state": "finished" | "cancelled" | "failed", "message"}``.

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

The trainer lives in parts in :mod:`transfer.training` (task building, the shared optimizer
step, the epoch loop, the reporter and the store); this module is its entry point.
"""

from __future__ import annotations

from transfer.training.config import TrainConfig
from transfer.models.model_io import MODEL_INFO_FILE
from transfer.core.runs import RunDir
from transfer.training import TrainingError
from transfer.training.loop import Trainer, evaluate
from transfer.training.schedule import lr_factor, seed_everything
from transfer.training.steps import fit_head_on_features, train_step
from transfer.training.store import METRICS_FILE, PREDICTIONS_FILE, class_metrics
from transfer.training.tasks import FeatureTask, ImageTask, seeded_head

__all__ = ["FeatureTask", "ImageTask", "METRICS_FILE", "MODEL_INFO_FILE", "PREDICTIONS_FILE", "Trainer",
           "TrainingError", "class_metrics", "evaluate", "fit_head_on_features", "lr_factor", "seed_everything",
           "seeded_head", "train_run", "train_step"]


def train_run(run: RunDir) -> None:
    """Train the run described by ``run.config``; see the module docstring for what it writes."""
    Trainer(run, TrainConfig.from_saved(run.config)).train()
