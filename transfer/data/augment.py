"""Picture preparation as batched tensor operations, on whatever device the pictures live on.

Decoded pictures are kept as one uint8 tensor of centre squares, ``(N, S, S, 3)``, where
``S`` is the backbone's resize size (``input_size / crop_pct``). Keeping squares costs the
outer edges of wide pictures but lets a whole batch be cropped, flipped and jittered by a
single ``grid_sample`` call, on the CPU or on the GPU where the uint8 tensor already lives.

The rules a picture follows on its way in (its centre square, the crop, the normalising
factors, a backbone's :class:`~transfer.data.picture.Preprocessing`) are those of
:mod:`transfer.data.picture`; this module applies them to batches of tensors.

* :func:`eval_batch`: the deterministic evaluation transform, resize short side to ``S``
  then centre-crop ``input_size`` (exactly what the weights were evaluated with), normalised;
  :func:`eval_transform` gives it for one picture (what the PyTorch predictor runs).
* :func:`augment_batch`: a preset applied to a batch: ``none`` (the evaluation transform),
  ``light`` (random resized crop over 35-100 % of the area, horizontal flip) or ``strong``
  (crop over 8-100 %, flip, brightness/contrast/saturation jitter of 40 %).

Random parameters come either from a ``torch.Generator`` (training batches) or from
:func:`view_params`, which derives them from each picture's content hash and a view number
alone, so an augmented view is the same picture in every run and its backbone features can
be cached.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transfer.data.picture import Preprocessing, centre_square, model_square, normalising_factors
from transfer.core.errors import TransferError


class AugmentError(TransferError):
    """An unknown augmentation preset."""


@dataclass(frozen=True)
class AugmentSpec:
    scale: tuple[float, float]  # share of the square's area the crop covers
    ratio: tuple[float, float]  # crop width / height
    flip: bool
    jitter: float  # brightness, contrast and saturation vary by up to this fraction


PRESETS: dict[str, AugmentSpec | None] = {
    "none": None,
    "light": AugmentSpec(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True, jitter=0.0),
    "strong": AugmentSpec(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True, jitter=0.4),
}

# Columns of a parameter row: crop width, crop height (fractions of the square), centre x, y
# (in [-1, 1]), flip sign, brightness, contrast, saturation factors.
N_PARAMS = 8


def get_preset(name: str) -> AugmentSpec | None:
    try:
        return PRESETS[name]
    except KeyError:
        raise AugmentError(f"Unknown augmentation '{name}': choose one of {', '.join(PRESETS)}.") from None


def preprocessing_for(base: Preprocessing, image_size: int | None) -> Preprocessing:
    """The backbone's preprocessing, at ``image_size`` when the user chose another size."""
    if image_size is None or image_size == base.input_size:
        return base
    return Preprocessing(image_size, base.mean, base.std, base.interpolation, base.crop_pct)


# --------------------------------------------------------------------------- the picture bank


def stack_squares(arrays: list[np.ndarray], side: int) -> torch.Tensor:
    """One ``(N, side, side, 3)`` uint8 tensor from pictures whose short side is ``side``."""
    bank = np.empty((len(arrays), side, side, 3), dtype=np.uint8)
    for index, array in enumerate(arrays):
        square = centre_square(array)
        if square.shape[0] != side:
            raise ValueError(f"picture {index} has short side {square.shape[0]}, expected {side}")
        bank[index] = square
    return torch.from_numpy(bank)


# --------------------------------------------------------------------------- transforms


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` to a new float ``(B, 3, S, S)`` tensor of values 0-255, laid out
    channels-last (the permuted view's strides are kept, so this is the one conversion copy)."""
    return images.permute(0, 3, 1, 2).to(torch.float32, copy=True)


def _normalise_(x: torch.Tensor, prep: Preprocessing, scale: float = 1.0) -> torch.Tensor:
    """``(x * scale - mean) / std`` in place, as one multiply and one subtraction over the batch.

    The two factors are worked out in double precision and rounded once (``normalising_factors``),
    the same numbers the exported ``predict.py`` uses, so both prepare identical inputs."""
    factor, offset = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                      for v in normalising_factors(prep.mean, prep.std, scale))
    return x.mul_(factor).sub_(offset)


def eval_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Centre crop of ``prep.input_size`` from squares of side ``prep.resize_size``, normalised,
    channels-last (the layout the CPU and GPU convolutions are fastest in)."""
    x = _to_float(images)
    side = x.shape[-1]
    if side != prep.resize_size:
        x = F.interpolate(x, size=(prep.resize_size, prep.resize_size), mode="bilinear",
                          align_corners=False, antialias=side > prep.resize_size)
        side = prep.resize_size
    offset = (side - prep.input_size) // 2
    x = x[:, :, offset : offset + prep.input_size, offset : offset + prep.input_size]
    return _normalise_(x.contiguous(memory_format=torch.channels_last), prep, 1 / 255)


def eval_transform(image, prep: Preprocessing) -> torch.Tensor:
    """One RGB picture as the normalised ``(3, input_size, input_size)`` tensor the model expects:
    :func:`transfer.data.picture.model_square`, then :func:`eval_batch`."""
    square = torch.from_numpy(np.array(model_square(image, prep))).unsqueeze(0)
    return eval_batch(square, prep)[0]


def random_params(n: int, spec: AugmentSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, N_PARAMS)`` random augmentation parameters for ``spec``."""
    u = torch.rand(n, 6, generator=generator)
    return _params_from_uniform(u, spec)


def view_params(hashes: list[str], view: int, spec: AugmentSpec) -> torch.Tensor:
    """Parameters that depend only on each picture's hash and the view number: the same
    augmented view in every run, so its features can be cached."""
    rows = []
    for sha in hashes:
        seed = int.from_bytes(hashlib.sha256(f"{sha}:{view}".encode()).digest()[:8], "little")
        rows.append(torch.rand(6, generator=torch.Generator().manual_seed(seed)))
    u = torch.stack(rows) if rows else torch.empty(0, 6)
    return _params_from_uniform(u, spec)


def _params_from_uniform(u: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    area = spec.scale[0] + (spec.scale[1] - spec.scale[0]) * u[:, 0]
    log_low, log_high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    ratio = torch.exp(log_low + (log_high - log_low) * u[:, 1])
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * u[:, 2] - 1.0)
    centre_y = (1.0 - height) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if spec.flip else torch.ones_like(u[:, 4])
    # One uniform number drives all three jitters, scrambled so they are not equal.
    j = spec.jitter
    brightness = 1.0 + j * (2.0 * u[:, 5] - 1.0)
    contrast = 1.0 + j * (2.0 * torch.frac(u[:, 5] * 7.31 + 0.17) - 1.0)
    saturation = 1.0 + j * (2.0 * torch.frac(u[:, 5] * 13.7 + 0.59) - 1.0)
    return torch.stack([width, height, centre_x, centre_y, flip, brightness, contrast, saturation], dim=1)


def augment_batch(images: torch.Tensor, prep: Preprocessing, spec: AugmentSpec | None,
                  params: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a uint8 ``(B, S, S, 3)`` batch on its own device; returns normalised
    ``(B, 3, input_size, input_size)`` floats, channels-last. ``spec=None`` is the evaluation transform."""
    if spec is None:
        return eval_batch(images, prep)
    if params is None:
        params = random_params(images.shape[0], spec, generator)
    params = params.to(images.device)
    x = _to_float(images)
    if spec.jitter == 0:
        # Resampling is linear and the border padding repeats edge values, so normalising
        # first gives the same result and saves a pass over the output.
        x = _normalise_(x, prep, 1 / 255)
    else:
        x.div_(255.0)  # the colour jitter works on values in [0, 1]
    size = prep.input_size
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0] = params[:, 0] * params[:, 4]  # a negative x scale mirrors the crop
    theta[:, 0, 2] = params[:, 2]
    theta[:, 1, 1] = params[:, 1]
    theta[:, 1, 2] = params[:, 3]
    grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.contiguous(memory_format=torch.channels_last)
    if spec.jitter == 0:
        return x
    return _normalise_(_colour_jitter(x, params[:, 5], params[:, 6], params[:, 7]), prep)


def _colour_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                   saturation: torch.Tensor) -> torch.Tensor:
    x = (x * brightness.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast.view(-1, 1, 1, 1) + mean).clamp_(0.0, 1.0)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return ((x - grey) * saturation.view(-1, 1, 1, 1) + grey).clamp_(0.0, 1.0)


def preview(arrays: list[np.ndarray], prep: Preprocessing, preset: str, copies: int = 3,
            seed: int = 0) -> list[list[np.ndarray]]:
    """What training will see: for each picture, ``copies`` augmented versions as uint8 arrays.

    ``arrays`` are decoded pictures whose short side is at least ``prep.resize_size``.
    """
    spec = get_preset(preset)
    squares = [np.ascontiguousarray(centre_square(a)) for a in arrays]
    bank = torch.stack([
        F.interpolate(torch.from_numpy(s).permute(2, 0, 1)[None].float(), size=(prep.resize_size,) * 2,
                      mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255)
        .to(torch.uint8)
        for s in squares
    ])
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    versions = []
    for _ in range(copies):
        x = augment_batch(bank, prep, spec, generator=generator) * std + mean  # back to [0, 1] for display
        versions.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return [[versions[c][i] for c in range(copies)] for i in range(len(arrays))]
