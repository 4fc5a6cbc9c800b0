"""Rebuild a trained model from its run directory, for prediction, export and explanations.

A finished run holds ``model.json`` (what to build) and ``model.safetensors`` (the weights).
Nothing here unpickles anything: weights come from safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from transfer.data.picture import Preprocessing
from transfer.models.backbones import load_backbone
from transfer.core.errors import TransferError

MODEL_INFO_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


class ModelNotReady(TransferError):
    """The run has no trained model (yet)."""


def model_info(model: nn.Module, *, backbone: str, method: str, classes: list[str], preprocessing: Preprocessing,
               dropout: float = 0.0, hidden: int | None = None, weights: str = WEIGHTS_FILE,
               initial_weights: dict | None = None) -> dict:
    """The content of ``model.json`` for a model whose head :func:`replace_head` installed.

    ``initial_weights`` (``{"name", "sha256", "source"[, "run"]}``) says which weights file the
    backbone started from, when it was not the catalogue's; the model card prints it.
    """
    head = model.transfer_head
    prep = preprocessing
    info = {
        "format": 1,
        "backbone": backbone,
        "method": method,
        "num_classes": len(classes),
        "classes": list(classes),
        "head": {"path": head.path, "in_features": head.in_features, "dropout": dropout, "hidden": hidden,
                 "convolutional": head.convolutional},
        "image_size": prep.input_size,
        "preprocessing": {"input_size": prep.input_size, "resize_size": prep.resize_size, "mean": list(prep.mean),
                          "std": list(prep.std), "interpolation": prep.interpolation, "crop_pct": prep.crop_pct},
        "weights": weights,
    }
    if initial_weights:
        info["initial_weights"] = dict(initial_weights)
    return info


def read_model_info(run_dir: Path | str) -> dict:
    path = Path(run_dir) / MODEL_INFO_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotReady(f"{Path(run_dir)} has no {MODEL_INFO_FILE}: it is not a trained run, or its training "
                            "has not started yet.") from None
    except json.JSONDecodeError:
        raise ModelNotReady(f"{path} is damaged; train the model again.") from None
    if not isinstance(info, dict) or info.get("format") != 1:
        raise ModelNotReady(f"{path} was written by another version of Transfer Studio; train the model again.")
    return info


def build_model(info: dict) -> nn.Module:
    """The architecture of a trained run with its new head, with random weights."""
    from transfer.models.heads import replace_head

    model = load_backbone(info["backbone"], pretrained=False)
    head = info.get("head") or {}
    replace_head(model, int(info["num_classes"]), dropout=float(head.get("dropout") or 0.0), hidden=head.get("hidden"))
    return model


def load_trained_model(run_dir: Path | str) -> tuple[nn.Module, list[str], Preprocessing]:
    """``(model in eval mode on the CPU, class labels in output order, preprocessing)``."""
    from safetensors.torch import load_file

    info = read_model_info(run_dir)
    weights = Path(run_dir) / info.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelNotReady(f"{Path(run_dir)} has no trained weights yet: wait until its first epoch has finished.")
    model = build_model(info)
    try:
        state = load_file(str(weights))
    except Exception as error:
        raise ModelNotReady(f"The weights in {weights} cannot be read ({error}); train the model again.") from error
    model.load_state_dict(state)
    model.eval()
    return model, list(info["classes"]), Preprocessing.from_info(info["preprocessing"])
