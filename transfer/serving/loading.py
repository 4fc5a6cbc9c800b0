"""A finished run's model, ready to predict with PyTorch, loaded from its run directory (a
picture becomes the tensor it expects through :func:`transfer.data.augment.eval_transform`).

Prediction (:mod:`transfer.serving.predict`) and exports (:mod:`transfer.serving.export`) both
ask this module for the model rather than for each other, so neither climbs back up to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from transfer.core.errors import TransferError
from transfer.data.picture import Preprocessing


class PredictError(TransferError):
    """A run that cannot be used for prediction, or input that cannot be predicted."""


@dataclass
class LoadedRun:
    model: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    backbone: str


def load_run_model(run_dir: Path | str) -> LoadedRun:
    """The trained model of a finished run (see transfer.models.model_io), in eval mode, with its class
    names and preprocessing. Weights come from safetensors only."""
    from transfer.models.model_io import load_trained_model, read_model_info

    try:
        model, labels, preprocessing = load_trained_model(run_dir)
    except RuntimeError as error:  # the weights file does not match model.json
        raise PredictError(
            f"The saved weights in {run_dir} do not fit the model the run describes "
            f"({str(error).splitlines()[0]}); the run folder may be damaged: train it again."
        ) from None
    return LoadedRun(model.eval(), labels, preprocessing, str(read_model_info(run_dir).get("backbone", "")))
