"""What a run keeps on disk: checkpoint, weights, ``model.json`` and the validation outputs
(the files and their formats are listed in transfer.training.run)."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transfer.training.config import TrainConfig
from transfer.core.devices import is_out_of_memory
from transfer.models.model_io import MODEL_INFO_FILE, model_info
from transfer.core.quota import check_written_file
from transfer.core.runs import RunDir
from transfer.core.files import atomic_path, atomic_write_json
from transfer.data.samples import relative_name

PREDICTIONS_FILE = "val_predictions.json"
METRICS_FILE = "val_metrics.json"
CHECKPOINT_FORMAT = 1
# What the parts of a checkpoint that training resumes from are called (transfer.training.loop).
CHECKPOINT_KEYS = frozenset({"epoch", "module", "optimizer", "scaler", "generator", "torch_rng", "samples_done",
                             "batch_size", "best"})
# What torch.load raises for a damaged file: cut short (EOFError, an OSError from the zip reader),
# a broken zip or storage (RuntimeError), bytes that are no checkpoint (UnpicklingError, KeyError,
# and from the weights-only unpickler an IndexError, its stack empty, for about 1 in 17 random files).
DAMAGED_CHECKPOINT_ERRORS = (EOFError, OSError, RuntimeError, pickle.UnpicklingError, KeyError, ValueError, IndexError)


@dataclass
class Best:
    """The best epoch so far and what early stopping counts."""

    accuracy: float = -1.0
    loss: float = math.inf
    epoch: int = 0
    min_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    probabilities: torch.Tensor | None = None
    state: dict | None = field(default=None, repr=False)  # feature transfer: the best head

    def is_beaten_by(self, val_accuracy: float, val_loss: float) -> bool:
        return val_accuracy > self.accuracy or (val_accuracy == self.accuracy and val_loss < self.loss)

    def patience_spent(self, val_loss: float, patience: int | None) -> bool:
        """Counts epochs without a lower validation loss; True once ``patience`` is used up."""
        if val_loss < self.min_val_loss:
            self.min_val_loss, self.epochs_without_improvement = val_loss, 0
        else:
            self.epochs_without_improvement += 1
        return patience is not None and self.epochs_without_improvement >= patience

    def to_checkpoint(self) -> dict:
        return {"best": {"accuracy": self.accuracy, "loss": self.loss, "epoch": self.epoch,
                         "min_val_loss": self.min_val_loss,
                         "epochs_without_improvement": self.epochs_without_improvement},
                "best_probabilities": self.probabilities, "best_state": self.state}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "Best":
        saved = checkpoint["best"]
        return cls(saved["accuracy"], saved["loss"], saved["epoch"], saved["min_val_loss"],
                   saved["epochs_without_improvement"], checkpoint.get("best_probabilities"),
                   checkpoint.get("best_state"))


class Store:
    """Writes nothing when ``writes`` is False: in distributed training only rank 0 keeps the run."""

    def __init__(self, run: RunDir, config: TrainConfig, data, *, writes: bool = True):
        self.run = run
        self.writes = writes
        self.config = config
        self.data = data  # a transfer.training.build.TrainingData
        self.model_info_written = False

    def write_labels(self) -> None:
        if self.writes:
            self.run.write_labels(self.data.classes)

    def finished_epoch_on_disk(self) -> int:
        if not self.writes or not self.run.checkpoint_path.exists():
            return 0
        return int(self.run.status().get("epoch") or 0)

    # ------------------------------------------------------------------ the model

    def write_model_info(self, model: torch.nn.Module) -> None:
        """``model.json``: how to rebuild ``model`` for prediction."""
        from transfer.models.weights import record

        if self.model_info_written or not self.writes:
            return
        self.model_info_written = True
        config, spec = self.config, self.config.initial_weights
        atomic_write_json(self.run.path / MODEL_INFO_FILE, model_info(
            model, backbone=config.backbone, method=config.method, classes=self.data.classes,
            preprocessing=self.data.prep, dropout=config.dropout, hidden=config.hidden,
            weights=self.run.weights_path.name, initial_weights=record(spec) if spec else None))

    def write_novelty(self, task, batch_size: int):
        """The reference "None of these" needs (:mod:`transfer.models.novelty`): its file, then its entry
        in ``model.json``; returns the validation pictures' novelty (None when there is none)."""
        from transfer.models.novelty import save_reference
        from transfer.training.reference import novelty_of_run

        if not self.writes or not (self.run.path / MODEL_INFO_FILE).is_file():
            return None
        reference, val_novelty = novelty_of_run(task, self.data.train_targets, self.run.weights_path, batch_size)
        if reference is None:
            return None
        entry = save_reference(self.run.path, reference)
        info_path = self.run.path / MODEL_INFO_FILE
        info = json.loads(info_path.read_text())
        atomic_write_json(info_path, {**info, "novelty": entry})
        self.run.append_event({"type": "info", "message": (
            f"\"None of these\": {len(reference.vectors)} training pictures kept as the reference; a picture "
            f"further than {reference.thresholds['normal']:.3f} from its k-th nearest (k = {reference.k}) is called "
            f"unknown (normal strictness)."), "novelty": {k: v for k, v in entry.items() if k != "calibration"}})
        return val_novelty

    def write_weights(self, model_state: dict) -> None:
        """The full model's state dict (backbone and head) as safetensors."""
        from safetensors.torch import save

        if not self.writes:
            return
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        with atomic_path(self.run.weights_path) as temp:
            temp.write_bytes(save(tensors, metadata={"format": "pt"}))
            check_written_file(self.run.path.parent, temp, self.run.weights_path, "model's weights")

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, checkpoint: dict) -> None:
        if not self.writes:
            return
        path = self.run.checkpoint_path
        with atomic_path(path) as temp:
            torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, temp)
            check_written_file(self.run.path.parent, temp, path, f"checkpoint of epoch {checkpoint.get('epoch')}")

    def load_checkpoint(self, warn) -> dict | None:
        """The last finished epoch's checkpoint, or None. A damaged file (cut short by a full
        disk, overwritten, not a checkpoint of this version) is reported through ``warn`` and
        ignored, so it never makes the run unrecoverable; anything else (no permission, no
        memory, a bug) is not a damaged file and is raised as it is."""
        path = self.run.checkpoint_path
        if not path.exists():
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except DAMAGED_CHECKPOINT_ERRORS as error:
            if isinstance(error, PermissionError) or is_out_of_memory(error):
                raise
            warn(f"The checkpoint {path.name} is damaged and cannot be read ({type(error).__name__}: {error}); "
                 "training starts again from epoch 1.")
            return None
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT \
                or not CHECKPOINT_KEYS <= checkpoint.keys():
            warn(f"The checkpoint {path.name} is damaged or from another version of the studio; "
                 "training starts again from epoch 1.")
            return None
        return checkpoint

    # ------------------------------------------------------------------ validation outputs

    def write_outputs(self, best: Best, val_novelty=None) -> None:
        """Validation predictions (with each picture's novelty, when known) and metrics of the
        best epoch, and the ``result`` event."""
        if not self.writes:
            return
        data, classes = self.data, self.data.classes
        predicted = best.probabilities.argmax(1)
        root = Path(data.dataset.root)
        predictions = [
            {"path": relative_name(sample.path, root), "sha256": sample.sha256, "label": sample.label,
             "predicted": classes[int(p)], "probabilities": [round(float(x), 6) for x in probs]}
            for sample, p, probs in zip(data.val_samples, predicted, best.probabilities)
        ]
        if val_novelty is not None:
            for prediction, novelty in zip(predictions, val_novelty):
                prediction["novelty"] = round(float(novelty), 6)
        atomic_write_json(self.run.path / PREDICTIONS_FILE,
                          {"classes": classes, "epoch": best.epoch, "predictions": predictions})
        metrics = class_metrics(data.val_targets, predicted, classes)
        metrics.update(epoch=best.epoch, val_accuracy=best.accuracy, val_loss=best.loss)
        atomic_write_json(self.run.path / METRICS_FILE, metrics)
        self.run.append_event({"type": "result", "best_epoch": best.epoch, "best_val_accuracy": best.accuracy,
                               "per_class_accuracy": {k: v["accuracy"] for k, v in metrics["per_class"].items()},
                               "files": [self.run.weights_path.name, PREDICTIONS_FILE, METRICS_FILE,
                                         MODEL_INFO_FILE]})


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
