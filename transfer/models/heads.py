"""Head surgery: find any backbone's classifier, read its input width, put a new head in its place.

Hard-coding a classifier's width is how transfer-learning code usually breaks (VGG16's
``classifier[6]`` takes 4096 inputs, not 512). Here the width is always read off the layer
that is being replaced, so the same call works for every architecture in the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transfer.core.errors import TransferError


class HeadError(TransferError):
    """The classifier of a model could not be found."""


@dataclass(frozen=True)
class HeadInfo:
    """Where the head sits and what it takes."""

    path: str  # dotted module path, e.g. "classifier.6" or "fc"
    in_features: int
    num_classes: int
    convolutional: bool  # a 1x1 convolution head (SqueezeNet) rather than a linear one


# Auxiliary classifiers exist only to help ImageNet training; they would need their own new
# heads and make forward() return tuples in train mode, so they are switched off.
_AUX_FLAG = "aux_logits"
_AUX_MODULES = ("AuxLogits", "aux1", "aux2")


def find_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """The dotted path and module of the final classification layer."""
    path = _timm_classifier_path(model)
    if path is None:
        path = _last_linear_or_conv_path(model)
    if path is None:
        raise HeadError(f"Could not find a classification layer in {type(model).__name__}.")
    return path, model.get_submodule(path)


def _timm_classifier_paths(model: nn.Module) -> list[str]:
    """timm names its classifier(s) in the pretrained config; distilled models have two."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    paths = cfg.get("classifier") or []
    paths = [paths] if isinstance(paths, str) else list(paths)
    found = []
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            found.append(path)
    return found


def _timm_classifier_path(model: nn.Module) -> str | None:
    paths = _timm_classifier_paths(model)
    return paths[0] if paths else None


def _last_linear_or_conv_path(model: nn.Module) -> str | None:
    last = None
    for name, module in model.named_modules():
        if name.split(".")[0] in _AUX_MODULES:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    return last


def in_features_of(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def make_head(in_features: int, num_classes: int, *, dropout: float = 0.0, hidden: int | None = None,
              convolutional: bool = False) -> nn.Module:
    """A new classifier: linear, optionally behind dropout and one hidden layer."""

    def layer(n_in: int, n_out: int) -> nn.Module:
        return nn.Conv2d(n_in, n_out, kernel_size=1) if convolutional else nn.Linear(n_in, n_out)

    parts: list[nn.Module] = []
    width = in_features
    if hidden:
        parts += [layer(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    if dropout > 0:
        parts.append(nn.Dropout(dropout))
    parts.append(layer(width, num_classes))
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def replace_head(model: nn.Module, num_classes: int, *, dropout: float = 0.0, hidden: int | None = None) -> HeadInfo:
    """Swap the model's classifier, in place, for a new head with ``num_classes`` outputs."""
    if num_classes < 1:
        raise HeadError("A classifier needs at least one class.")
    _disable_auxiliary_heads(model)
    path, old = find_classifier(model)
    extra_paths = [p for p in _timm_classifier_paths(model) if p != path]
    convolutional = isinstance(old, nn.Conv2d)
    width = in_features_of(old)
    new = make_head(width, num_classes, dropout=dropout, hidden=hidden, convolutional=convolutional)
    set_submodule(model, path, new)
    for extra in extra_paths:  # a distillation head is averaged in: it must match
        layer = model.get_submodule(extra)
        set_submodule(model, extra, make_head(in_features_of(layer), num_classes, convolutional=convolutional))
    _record_num_classes(model, num_classes)
    info = HeadInfo(path, width, num_classes, convolutional)
    model.transfer_head = info  # travels with the model so later steps need not search again
    return info


def head_module(model: nn.Module) -> nn.Module:
    """The head installed by :func:`replace_head`."""
    info: HeadInfo | None = getattr(model, "transfer_head", None)
    if info is None:
        raise HeadError("This model has no replaced head yet; call replace_head first.")
    return model.get_submodule(info.path)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


def _disable_auxiliary_heads(model: nn.Module) -> None:
    if hasattr(model, _AUX_FLAG):
        setattr(model, _AUX_FLAG, False)
        for name in _AUX_MODULES:
            if hasattr(model, name):
                setattr(model, name, None)


def _record_num_classes(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
