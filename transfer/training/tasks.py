"""What is trained on: a head on cached backbone features, or the whole model on pictures.

Both kinds answer the same three calls the loop makes: ``train_mode(epoch)``,
``forward_train(indices, epoch, generator)`` (logits of the training pictures ``indices``) and
``val_logits(batch_size)`` (logits of every validation picture, in order).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from transfer.data.augment import augment_batch, eval_batch, get_preset
from transfer.data.picture import Preprocessing
from transfer.data.bank import DeviceBatches, PictureBank
from transfer.training.config import TrainConfig
from transfer.core.devices import DeviceSetup
from transfer.models.methods import prepare_model

CPU_MICRO_BATCH = 16


class FeatureTask:
    """Feature transfer: only the head learns, on cached backbone features."""

    uses_amp = False
    micro_batch = None
    sharded = False  # with several ranks, each trains the same head on all features

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

    def gradient_sync(self, last_part: bool):
        return contextlib.nullcontext()

    def val_logits(self, batch_size: int) -> torch.Tensor:
        self.module.eval()
        with torch.inference_mode():
            return self.module(self.val_features).float()

    def trainable_groups(self, lr: float) -> list[dict]:
        for param in self.module.parameters():
            param.requires_grad_(True)
        return [{"name": "head", "params": list(self.module.parameters()), "lr": lr}]


class ImageTask:
    """Fine-tuning and training from scratch: the whole model on (augmented) pictures."""

    uses_amp = True
    sharded = False  # see transfer.training.ranks.DistributedImageTask

    def __init__(self, model: nn.Module, config: TrainConfig, train_bank: PictureBank | torch.Tensor,
                 val_bank: PictureBank | torch.Tensor, prep: Preprocessing, setup: DeviceSetup):
        self.module = model.to(setup.device, memory_format=setup.memory_format())
        self.forward_module = self.module  # what training steps call (a DDP wrapper with several ranks)
        self.config = config
        # uint8 (N, S, S, 3) pictures, read a batch at a time from the bank file (or kept whole
        # in GPU memory when they fit): indexed and sliced like the tensor they replace.
        self.train_bank = DeviceBatches(train_bank, setup.device)
        self.val_bank = DeviceBatches(val_bank, setup.device)
        self.prep = prep
        self.spec = get_preset(config.augmentation)
        self.setup = setup
        self.plan = None
        self.plan_is_head_only: bool | None = None
        # On the CPU, 16 pictures at a time run as fast as more, and the activations kept for
        # the backward pass (most of the memory) shrink with the part size.
        self.micro_batch = CPU_MICRO_BATCH if setup.kind == "cpu" else None

    def trainable_groups(self, lr: float) -> list[dict]:
        plan = prepare_model(self.module, self.config.method, lr=lr,
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
            return self.forward_module(x)

    def gradient_sync(self, last_part: bool):
        """Where gradients are exchanged between ranks, only after a batch's last part."""
        return contextlib.nullcontext()

    def val_logits(self, batch_size: int) -> torch.Tensor:
        return self.logits_of(self.val_bank, batch_size)

    def logits_of(self, bank: DeviceBatches, batch_size: int) -> torch.Tensor:
        """Logits of a bank's pictures in evaluation mode (no augmentation), a batch at a time."""
        self.module.eval()
        out = []
        with torch.inference_mode(), self.setup.autocast():
            for images in bank.batches(batch_size):
                x = eval_batch(images, self.prep)
                out.append(self.module(x.contiguous(memory_format=self.setup.memory_format())).float())
        return torch.cat(out) if out else torch.empty(0)


def seeded_head(in_features: int, num_classes: int, config: TrainConfig) -> nn.Module:
    """The new head for feature transfer, initialised from the run's seed alone (the backbone is
    built in another thread that also draws random numbers, so the global generator is not
    reproducible here)."""
    from transfer.models.heads import make_head

    head = make_head(in_features, num_classes, dropout=config.dropout, hidden=config.hidden)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)  # nn.Linear's own default range
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return head
