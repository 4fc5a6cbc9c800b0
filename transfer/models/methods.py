"""The transfer methods applied to a model (their descriptions, as data, live in
:mod:`transfer.models.catalogue`, which pages read without torch).

* ``features`` (feature transfer): the pretrained backbone is frozen, BatchNorm statistics
  included; only the new head learns, so backbone features can be computed once and cached.
* ``finetune`` (parameter transfer): pretrained weights are the starting point; the head and
  the last N blocks (or all) learn, the backbone at a smaller learning rate.
* ``scratch`` (structure transfer): the same architecture with random weights, everything
  trains at one learning rate: the baseline that shows what pretrained knowledge is worth.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transfer.models.catalogue import METHODS, MethodError, TransferMethod, get_method  # noqa: F401  (public names)
from transfer.models.heads import head_module


@dataclass
class Block:
    """A run of consecutive backbone layers that fine-tuning unfreezes together."""

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter]


def backbone_blocks(model: nn.Module, target: int = 8) -> list[Block]:
    """The backbone (everything but the head) cut into about ``target`` ordered blocks.

    Starting from the whole model, the heaviest container is split into its children until
    there are enough blocks; this follows each architecture's own structure (ResNet stages,
    EfficientNet stages, transformer layers) without a table per family.
    """
    head_ids = {id(p) for p in head_module(model).parameters()}

    def own_params(module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if id(p) not in head_ids]

    def split(name: str, module: nn.Module) -> list[Block]:
        loose = [p for p in module.parameters(recurse=False) if id(p) not in head_ids]
        parts = [Block(f"{name}.(own)" if name else "(own)", [], loose)] if loose else []
        for child_name, child in module.named_children():
            params = own_params(child)
            if params:
                full = f"{name}.{child_name}" if name else child_name
                parts.append(Block(full, [child], params))
        return parts

    def size(block: Block) -> int:
        return sum(p.numel() for p in block.params)

    def composite(block: Block) -> bool:
        return len(block.modules) == 1 and any(True for _ in block.modules[0].children())

    def splittable(block: Block, into_layers: bool) -> bool:
        parts = split(block.name, block.modules[0]) if len(block.modules) == 1 else []
        if len(parts) < 2:
            return False
        # A residual block is mostly single layers: keep it whole unless splitting into layers.
        in_composites = sum(size(p) for p in parts if composite(p))
        return into_layers or in_composites >= 0.5 * sum(map(size, parts))

    blocks = split("", model)
    # Split into composite units (stages, residual blocks) first; into single layers only when a
    # plain stack (VGG's features) would otherwise leave fewer than four blocks.
    for into_layers, enough in ((False, target), (True, min(4, target))):
        while len(blocks) < enough:
            candidates = [b for b in blocks if splittable(b, into_layers)]
            if not candidates:
                break
            heaviest = max(candidates, key=size)
            index = blocks.index(heaviest)
            blocks[index:index + 1] = split(heaviest.name, heaviest.modules[0])
    return blocks


@dataclass
class TransferPlan:
    """What trains and how fast: the result of applying a method to a model."""

    method: TransferMethod
    model: nn.Module
    head: nn.Module
    blocks: list[Block]
    trained_blocks: int  # how many of the last blocks train
    param_groups: list[dict]

    @property
    def frozen_blocks(self) -> list[Block]:
        return self.blocks[: len(self.blocks) - self.trained_blocks]

    def train_mode(self) -> None:
        """Train mode for what learns; frozen blocks stay in eval so their BatchNorm statistics never move."""
        self.model.train()
        for block in self.frozen_blocks:
            for module in block.modules:
                module.eval()
        self.head.train()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]


def prepare_model(model: nn.Module, method: str | TransferMethod, *, lr: float,
                  train_blocks: int | None = None, backbone_lr_mult: float | None = None) -> TransferPlan:
    """Freeze and group a model (whose head is already replaced) for ``method``.

    ``train_blocks`` applies to fine-tuning: how many of the last backbone blocks learn
    (``None`` = all, 0 = head only, useful for a few warm-up epochs before unfreezing).
    The returned ``param_groups`` go straight into a torch optimizer.
    """
    method = get_method(method) if isinstance(method, str) else method
    head = head_module(model)
    blocks = backbone_blocks(model)
    if not method.trains_backbone:
        trained = 0
    elif method.name == "scratch" or train_blocks is None:
        trained = len(blocks)
    else:
        if train_blocks < 0:
            raise MethodError("The number of blocks to fine-tune cannot be negative.")
        trained = min(train_blocks, len(blocks))
    mult = method.backbone_lr_mult if backbone_lr_mult is None else backbone_lr_mult

    for param in model.parameters():
        param.requires_grad_(False)
    for param in head.parameters():
        param.requires_grad_(True)
    backbone_params = [p for block in blocks[len(blocks) - trained:] for p in block.params]
    for param in backbone_params:
        param.requires_grad_(True)

    groups = [{"name": "head", "params": list(head.parameters()), "lr": lr}]
    if backbone_params:
        groups.append({"name": "backbone", "params": backbone_params, "lr": lr * mult})
    return TransferPlan(method, model, head, blocks, trained, groups)


def create_model(backbone: str, num_classes: int, method: str | TransferMethod, *,
                 dropout: float = 0.0, hidden: int | None = None, initial_weights=None) -> nn.Module:
    """A catalogue backbone with a new head for ``num_classes``, initialised as ``method`` wants:
    from the catalogue's pretrained weights, from random ones, or from the file ``initial_weights``
    (see :func:`transfer.models.backbones.load_weights_file`; what the file lacks starts random)."""
    from transfer.models.backbones import load_backbone, load_weights_file
    from transfer.models.heads import replace_head

    method = get_method(method) if isinstance(method, str) else method
    model = load_backbone(backbone, pretrained=method.pretrained and initial_weights is None)
    replace_head(model, num_classes, dropout=dropout, hidden=hidden)
    if initial_weights is not None:
        load_weights_file(model, initial_weights, backbone)
    return model
