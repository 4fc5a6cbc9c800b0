"""Grad-CAM: which part of a picture made the model choose a class.

The gradient of the class score with respect to a late feature map says how much each channel
matters for that class; weighting the map's channels by it and keeping the positive part gives
a coarse heat map, scaled up to the picture (Selvaraju et al., 2017).

Which feature map:

* convolutional networks (torchvision and timm): the last module that still outputs a spatial
  ``(N, C, H, W)`` map before global pooling, found by watching one forward pass, so no table
  per family is needed (ResNet ``layer4``, EfficientNet ``bn2`` or ``features``, ConvNeXt ``stages``);
* vision transformers (ViT, DeiT): the input of the last block's attention (its first norm).
  The class token reads the patch tokens there, whereas after the last block only the class
  token reaches the head, so patch gradients would be zero. The patch tokens (class and
  distillation tokens removed) are laid back out on their grid, e.g. 14 x 14 for 224 px / 16 px;
* Swin transformers: the final norm, whose output is already a grid, channels last.

Anything else (for example an MLP-Mixer without a spatial map) gets no layer and a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from transfer.core.errors import TransferError

CONV = "conv"  # output (N, C, H, W)
TOKENS = "tokens"  # output (N, prefix + H*W, C)
CHANNELS_LAST = "channels_last"  # output (N, H, W, C)


class ExplainError(TransferError):
    """Grad-CAM cannot be computed for this model or class."""


@dataclass(frozen=True)
class CamLayer:
    """The layer Grad-CAM reads, how its output is laid out, or why there is none."""

    name: str | None
    module: nn.Module | None = field(repr=False)
    kind: str | None
    description: str  # one sentence for the page: where the heat map comes from, or why not
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    @property
    def found(self) -> bool:
        return self.module is not None


_CACHE: "WeakKeyDictionary[nn.Module, CamLayer]" = WeakKeyDictionary()


def find_cam_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(dotted name, module)`` of the layer Grad-CAM uses, or None (see :func:`cam_layer_info` for why)."""
    info = cam_layer_info(model)
    return (info.name, info.module) if info.found else None


def cam_layer_info(model: nn.Module) -> CamLayer:
    """The Grad-CAM layer of ``model`` with a sentence describing it; computed once per model."""
    info = _CACHE.get(model)
    if info is None:
        info = _transformer_layer(model) or _convolutional_layer(model)
        _CACHE[model] = info
    return info


# --------------------------------------------------------------------------- choosing the layer


def _transformer_layer(model: nn.Module) -> CamLayer | None:
    kind = type(model).__name__
    if kind.startswith("SwinTransformer") and isinstance(getattr(model, "norm", None), nn.Module):
        return CamLayer("norm", model.norm, CHANNELS_LAST,
                        "Heat map from the Swin transformer's final norm (its last stage's grid of patches).")
    blocks = _transformer_blocks(model)
    if blocks is None:
        return None
    blocks_name, last_index, first_norm = blocks
    name = f"{blocks_name}.{last_index}.{first_norm}"
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid = _patch_grid(model)
    where = f"{grid[0]} x {grid[1]} grid" if grid else "square grid"
    return CamLayer(name, model.get_submodule(name), TOKENS,
                    f"Heat map from the vision transformer's last block ('{name}'): the patch tokens, "
                    f"without the {prefix} class/distillation token(s), laid out on their {where}.",
                    prefix_tokens=prefix, grid=grid)


def _transformer_blocks(model: nn.Module) -> tuple[str, str, str] | None:
    """(blocks path, last index, first-norm name) for torchvision and timm ViT-style models."""
    for blocks_name, norm_name in (("encoder.layers", "ln_1"), ("blocks", "norm1")):
        try:
            blocks = model.get_submodule(blocks_name)
        except AttributeError:
            continue
        children = list(blocks.named_children())
        if children and isinstance(getattr(children[-1][1], norm_name, None), nn.Module) \
                and _has_token_stem(model):
            return blocks_name, children[-1][0], norm_name
    return None


def _has_token_stem(model: nn.Module) -> bool:
    return any(hasattr(model, attr) for attr in ("class_token", "cls_token", "patch_embed", "conv_proj"))


def _patch_grid(model: nn.Module) -> tuple[int, int] | None:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None:
        return int(grid[0]), int(grid[1])
    image_size, patch_size = getattr(model, "image_size", None), getattr(model, "patch_size", None)
    if isinstance(image_size, int) and isinstance(patch_size, int):
        return image_size // patch_size, image_size // patch_size
    return None


def _convolutional_layer(model: nn.Module) -> CamLayer:
    """Watch one forward pass; keep the last module (with weights, outside the head) whose
    output is still a spatial ``(N, C, H, W)`` map. Parents finish after their children, so
    a whole stage wins over its last block."""
    head_ids = _head_module_ids(model)
    outputs: list[tuple[str, tuple]] = []
    handles = []
    for name, module in model.named_modules():
        if not name or id(module) in head_ids or not any(True for _ in module.parameters()):
            continue
        handles.append(module.register_forward_hook(_shape_recorder(name, outputs)))
    was_training = model.training
    model.eval()  # in train mode the probe would move BatchNorm statistics
    try:
        with torch.inference_mode(False), torch.no_grad():
            model(torch.zeros(1, 3, *_probe_size(model), device=_device_of(model)))
    except Exception as error:  # noqa: BLE001 - any architecture may refuse a probe; explain, don't crash
        return CamLayer(None, None, None, f"No heat map: a probe pass through {type(model).__name__} failed ({error}).")
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    spatial = [name for name, shape in outputs if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
    if not spatial:
        return CamLayer(None, None, None,
                        f"No heat map: {type(model).__name__} keeps no spatial feature map before its classifier.")
    name = spatial[-1]
    later = outputs[[n for n, _ in outputs].index(name) + 1:]
    if any(len(shape) == 3 for _, shape in later):
        # The map is cut into a token sequence and processed further (MLP-Mixer and the like):
        # a map taken here would show the first layer's view, not what decided the class.
        return CamLayer(None, None, None,
                        f"No heat map: {type(model).__name__} turns its pictures into a sequence of tokens "
                        "early on and keeps no late spatial feature map to explain.")
    shape = dict(outputs)[name]
    return CamLayer(name, model.get_submodule(name), CONV,
                    f"Heat map from the last convolutional stage ('{name}', a {shape[2]} x {shape[3]} map for a "
                    f"{_probe_size(model)[0]} px picture).")


def _shape_recorder(name: str, outputs: list):
    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append((name, tuple(output.shape)))
    return record


def _head_module_ids(model: nn.Module) -> set[int]:
    info = getattr(model, "transfer_head", None)
    if info is not None:
        head = model.get_submodule(info.path)
    else:
        from transfer.models.heads import HeadError, find_classifier

        try:
            _, head = find_classifier(model)
        except HeadError:
            return set()
    return {id(m) for m in head.modules()}


def _probe_size(model: nn.Module) -> tuple[int, int]:
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return (int(size[1]), int(size[2])) if size else (224, 224)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# --------------------------------------------------------------------------- Grad-CAM


def gradcam(model: nn.Module, input_tensor: torch.Tensor, target_class: int | None = None,
            layer: str | nn.Module | None = None, *, return_target: bool = False):
    """A heat map of shape ``(H, W)`` (the input's height and width) with values in [0, 1].

    ``input_tensor`` is one preprocessed picture, ``(3, H, W)`` or ``(1, 3, H, W)``.
    ``target_class`` defaults to the model's top class. ``layer`` (a dotted name or a module)
    overrides the automatic choice; it must output ``(N, C, H, W)``. The model is run in eval
    mode and left as it was: no hook, no gradient, no ``requires_grad`` change stays behind.
    With ``return_target`` the class explained is returned too.
    """
    x = input_tensor if input_tensor.dim() == 4 else input_tensor.unsqueeze(0)
    if x.shape[0] != 1:
        raise ExplainError("Grad-CAM explains one picture at a time; pass a single image.")
    info = _layer_for(model, layer)
    was_training = model.training
    model.eval()
    try:
        cam, target = _run_gradcam(model, x, target_class, info)
    finally:
        model.train(was_training)
    return (cam, target) if return_target else cam


def _layer_for(model: nn.Module, layer) -> CamLayer:
    if layer is None:
        info = cam_layer_info(model)
        if not info.found:
            raise ExplainError(info.description)
        return info
    module = model.get_submodule(layer) if isinstance(layer, str) else layer
    automatic = cam_layer_info(model)
    if automatic.module is module:  # keeps the token or channels-last layout of a transformer layer
        return automatic
    name = next((n for n, m in model.named_modules() if m is module), type(module).__name__)
    return CamLayer(name, module, CONV, f"Heat map from '{name}'.")


def _run_gradcam(model: nn.Module, x: torch.Tensor, target_class: int | None, info: CamLayer):
    captured: dict[str, torch.Tensor] = {}

    def capture(module, inputs, output):
        # Everything before this layer ran without autograd; the graph starts here, so only the
        # few layers between the map and the score are recorded, and no parameter is touched.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        captured["map"] = leaf
        return leaf.clone()  # a non-leaf copy, so in-place layers downstream stay legal

    handle = info.module.register_forward_hook(capture)
    try:
        # inference_mode(False) lets the web app call this from inside an inference block.
        with torch.inference_mode(False), torch.no_grad():
            logits = model(x.clone())
            if "map" not in captured:
                raise ExplainError(f"The layer '{info.name}' did not run during the forward pass.")
            if target_class is None:
                target_class = int(logits[0].argmax())
            if not 0 <= target_class < logits.shape[1]:
                raise ExplainError(f"Class {target_class} does not exist; the model has {logits.shape[1]} classes.")
            score = logits[0, target_class]
            gradient = None
            if score.requires_grad:
                with torch.enable_grad():
                    (gradient,) = torch.autograd.grad(score, captured["map"], allow_unused=True)
    finally:
        handle.remove()
    activation = captured["map"].detach()
    if gradient is None:  # the score does not depend on this layer at all
        gradient = torch.zeros_like(activation)
    activation, gradient = _as_grid(activation, info), _as_grid(gradient, info)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).float()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    return _normalise(cam), target_class


def _as_grid(tensor: torch.Tensor, info: CamLayer) -> torch.Tensor:
    """Any supported layer output as ``(N, C, H, W)``."""
    if info.kind == CHANNELS_LAST:
        return tensor.permute(0, 3, 1, 2)
    if info.kind == TOKENS:
        patches = tensor[:, info.prefix_tokens:, :]
        count = patches.shape[1]
        grid = info.grid
        if grid is None or grid[0] * grid[1] != count:
            side = math.isqrt(count)
            if side * side != count:
                raise ExplainError(f"{count} patch tokens do not form a square grid; no heat map for this input size.")
            grid = (side, side)
        return patches.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], *grid)
    if tensor.dim() != 4:
        raise ExplainError(f"The layer '{info.name}' outputs shape {tuple(tensor.shape)}, not a (N, C, H, W) feature map.")
    return tensor


def _normalise(cam: torch.Tensor) -> np.ndarray:
    cam = cam - cam.min()
    peak = float(cam.max())
    # A flat map (nothing speaks for the class) stays all zeros rather than amplifying noise.
    result = cam / peak if peak > 1e-12 else torch.zeros_like(cam)
    return result.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- pictures


# A perceptually ordered ramp from cold to hot: dark blue, blue, cyan, yellow, red.
_RAMP = np.array([[0, 0, 90], [20, 60, 230], [40, 210, 230], [250, 220, 40], [220, 30, 20]], dtype=np.float32)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] as ``(H, W, 3)`` uint8 colours on the ramp above."""
    position = np.clip(cam, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    colours = _RAMP[low] * (1.0 - fraction) + _RAMP[low + 1] * fraction
    return colours.round().astype(np.uint8)


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heat map, scaled to ``image``, blended over it (``alpha`` = weight of the heat map)."""
    picture = image.convert("RGB")
    scaled = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F").resize(picture.size, Image.Resampling.BILINEAR)
    heat = Image.fromarray(heat_colours(np.asarray(scaled)))
    return Image.blend(picture, heat, float(np.clip(alpha, 0.0, 1.0)))
