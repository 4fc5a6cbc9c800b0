"""Training one run, start to end: one run directory in, events, status, a model and its evaluation out.

``train_run(run)`` is what the worker process calls. It reads ``run.config`` (a
:class:`transfer.training.config.TrainConfig`), trains, and writes the model, its evaluation
and the run folder's other files, as :mod:`transfer.core.runs` describes them.

How each method trains: ``features`` computes (or reads from the cache) the backbone's
features once and trains only the head, single-threaded on the CPU, where such tiny steps are
fastest. ``finetune`` first fits the new head on frozen features (a linear probe, "LP-FT"),
keeps the pretrained BatchNorm statistics, and then trains head and backbone end to end from
the decoded uint8 pictures, augmented in batches on the device. ``scratch`` trains everything
from random weights. All three use the same epoch loop: learning rate set per step from the
schedule, loss and accuracy summed on the device, the batch halved on out-of-memory, a
checkpoint per epoch, the best epoch's weights kept.

The trainer lives in parts in :mod:`transfer.training`: task building (``tasks``), the shared
optimizer step (``steps``), the epoch loop (``loop``), the reporter and the store; this module
is its entry point.
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
