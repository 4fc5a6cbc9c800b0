"""The peer the benchmarks measure against: transfer learning written the plain PyTorch way.

This follows the official PyTorch transfer-learning tutorial step by step: ``ImageFolder``
datasets, a ``DataLoader`` with batch size 4, ``RandomResizedCrop(224)`` and a horizontal flip
for training, ``Resize(256)`` + ``CenterCrop(224)`` for validation, SGD with learning rate
1e-3 and momentum 0.9, ``StepLR(step_size=7, gamma=0.1)``, cross-entropy, the best epoch's
weights kept. Two variants, as in the tutorial: fine-tuning (every weight trains) and the
fixed feature extractor (backbone frozen, only the new last layer trains, and the backbone
still runs on every picture in every epoch).

The backbone is the same bundled one our engine uses, loaded through
``transfer.models.backbones.load_backbone`` and normalised as its weights expect; its last layer is
replaced by hand, as the tutorial does.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class PeerResult:
    variant: str
    epochs: int
    best_val_accuracy: float
    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    train_images_per_s: list[float] = field(default_factory=list)

    @property
    def mean_epoch_seconds(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "epochs": self.epochs, "best_val_accuracy": round(self.best_val_accuracy, 4),
                "seconds": round(self.seconds, 2), "mean_epoch_seconds": round(self.mean_epoch_seconds, 2),
                "train_images_per_s": round(sum(self.train_images_per_s) / len(self.train_images_per_s), 2)}


def loaders(data_dir: Path, mean, std, batch_size: int = 4, workers: int | None = None):
    from torchvision import datasets, transforms

    normalise = transforms.Normalize(mean, std)
    transform = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalise]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   normalise]),
    }
    workers = os.cpu_count() if workers is None else workers
    image_sets = {split: datasets.ImageFolder(Path(data_dir) / split, transform[split]) for split in ("train", "val")}
    return {split: torch.utils.data.DataLoader(image_sets[split], batch_size=batch_size, shuffle=split == "train",
                                               num_workers=workers)
            for split in ("train", "val")}


def build(backbone: str, num_classes: int, fixed_features: bool) -> nn.Module:
    from transfer.models.backbones import load_backbone

    model = load_backbone(backbone)
    if fixed_features:
        for param in model.parameters():
            param.requires_grad = False
    # The tutorial writes `model.fc = nn.Linear(model.fc.in_features, 2)`; timm's EfficientNets
    # call that layer `classifier`.
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    return model


def train_peer(data_dir: Path, backbone: str = "efficientnet_lite0", fixed_features: bool = False, epochs: int = 25,
               batch_size: int = 4, workers: int | None = None, max_train_batches: int | None = None,
               log=print) -> PeerResult:
    """The tutorial's ``train_model``, with timing."""
    from transfer.models.backbones import get_backbone

    prep = get_backbone(backbone).preprocessing
    data = loaders(data_dir, prep.mean, prep.std, batch_size, workers)
    num_classes = len(data["train"].dataset.classes)
    model = build(backbone, num_classes, fixed_features)
    parameters = model.classifier.parameters() if fixed_features else model.parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    variant = "fixed feature extractor" if fixed_features else "fine-tuning"
    result = PeerResult(variant, epochs, 0.0, 0.0)
    best_weights = copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            correct, seen = 0, 0
            phase_started = time.perf_counter()
            for batch, (inputs, labels) in enumerate(data[phase]):
                if phase == "train" and max_train_batches is not None and batch >= max_train_batches:
                    break
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += int((outputs.argmax(1) == labels).sum())
                seen += inputs.shape[0]
            if phase == "train":
                scheduler.step()
                result.train_images_per_s.append(seen / (time.perf_counter() - phase_started))
            accuracy = correct / seen
            if phase == "val" and accuracy > result.best_val_accuracy:
                result.best_val_accuracy = accuracy
                best_weights = copy.deepcopy(model.state_dict())
        result.epoch_seconds.append(time.perf_counter() - epoch_started)
        log(f"  peer {variant}: epoch {epoch + 1}/{epochs} val_acc {accuracy:.3f} "
            f"({result.epoch_seconds[-1]:.1f} s)")
    model.load_state_dict(best_weights)
    result.seconds = time.perf_counter() - started
    return result
