"""A finished run's model, ready to predict with PyTorch: loaded from its run directory, and a
picture turned into the tensor it expects (the same square training and validation start from).

Prediction (:mod:`transfer.serving.predict`) and exports (:mod:`transfer.serving.export`) both
ask this module for the model rather than for each other, so neither climbs back up to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from transfer.core.errors import TransferError
from transfer.data.augment import centre_square, eval_batch
from transfer.data.images import resize_short_side, to_array
from transfer.models.backbones import Preprocessing


class PredictError(TransferError):
    """A run that cannot be used for prediction, or input that cannot be predicted."""


def model_view(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The ``(resize_size, resize_size, 3)`` uint8 centre square of a picture whose short side is
    scaled to ``resize_size``: the same square training and validation start from (see
    transfer.data.cache and transfer.data.augment), so a picture is predicted exactly as it was validated."""
    return centre_square(to_array(resize_short_side(image, preprocessing.resize_size, preprocessing.interpolation)))


def eval_transform(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """An RGB picture as the normalised ``(3, input_size, input_size)`` tensor the model expects."""
    square = torch.from_numpy(np.array(model_view(image, preprocessing))).unsqueeze(0)
    return eval_batch(square, preprocessing)[0]


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
