"""Grad-CAM: the layer it reads for each family, a normalised map of the input's size, no traces
left on the model, and a map that points at the region that decides the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from transfer.analysis.explain import ExplainError, cam_layer_info, find_cam_layer, gradcam, heat_colours, overlay
from transfer.models.methods import create_model


def on_meta(build):
    """An architecture without allocating or initialising its weights: enough to pick a layer."""
    with torch.device("meta"):
        return build()


# --------------------------------------------------------------------------- choosing the layer


@pytest.mark.parametrize("build, expected, kind", [
    (torchvision.models.resnet18, "layer4", "conv"),
    (torchvision.models.convnext_tiny, "features", "conv"),
    (torchvision.models.vit_b_16, "encoder.layers.encoder_layer_11.ln_1", "tokens"),
    (torchvision.models.swin_t, "norm", "channels_last"),
])
def test_torchvision_families(build, expected, kind):
    model = on_meta(build)
    name, module = find_cam_layer(model)
    assert name == expected and module is model.get_submodule(expected)
    assert cam_layer_info(model).kind == kind


def test_bundled_efficientnet_lite_uses_its_last_convolution_block():
    model = create_model("efficientnet_lite0", 3, "scratch")
    name, module = find_cam_layer(model)
    assert name == "bn2"  # conv_head's norm and activation: the last 7 x 7 map before pooling
    info = cam_layer_info(model)
    assert "7 x 7" in info.description


def test_timm_transformers_strip_their_prefix_tokens():
    import timm

    deit = on_meta(lambda: timm.create_model("deit_tiny_distilled_patch16_224"))
    info = cam_layer_info(deit)
    assert info.name == "blocks.11.norm1" and info.prefix_tokens == 2 and info.grid == (14, 14)
    vit = on_meta(torchvision.models.vit_b_16)
    assert cam_layer_info(vit).prefix_tokens == 1 and cam_layer_info(vit).grid == (14, 14)


def test_no_layer_comes_with_a_reason():
    import timm

    mixer = on_meta(lambda: timm.create_model("mixer_b16_224"))
    assert find_cam_layer(mixer) is None
    info = cam_layer_info(mixer)
    assert not info.found and info.description.startswith("No heat map")
    with pytest.raises(ExplainError, match="No heat map"):
        gradcam(mixer, torch.zeros(1, 3, 224, 224, device="meta"))


# --------------------------------------------------------------------------- the map


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", 3, "features").eval()


def test_map_is_normalised_and_has_the_input_size(lite):
    x = torch.randn(1, 3, 200, 168)
    cam = gradcam(lite, x)
    assert isinstance(cam, np.ndarray) and cam.shape == (200, 168)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() == pytest.approx(1.0) and cam.min() == pytest.approx(0.0)
    # A 3-d input (one picture without batch axis) works too.
    assert gradcam(lite, x[0], target_class=2).shape == (200, 168)
    with pytest.raises(ExplainError):
        gradcam(lite, x, target_class=3)


def test_no_hooks_grads_or_flag_changes_stay_behind(lite):
    for index, param in enumerate(lite.parameters()):  # a mix, as a fine-tuned model has
        param.requires_grad_(index % 2 == 0)
    flags = [p.requires_grad for p in lite.parameters()]
    lite.train()
    layer = lite.get_submodule("bn2")
    running_mean = layer.running_mean.clone()

    cam = gradcam(lite, torch.randn(1, 3, 224, 224))

    assert cam.shape == (224, 224)
    assert lite.training  # mode restored
    assert torch.equal(layer.running_mean, running_mean)  # ran in eval mode: statistics untouched
    assert [p.requires_grad for p in lite.parameters()] == flags
    assert all(p.grad is None for p in lite.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lite.modules())
    lite.eval()
    for param in lite.parameters():
        param.requires_grad_(True)


def test_works_inside_inference_mode_and_with_frozen_weights(lite):
    for param in lite.parameters():
        param.requires_grad_(False)
    try:
        with torch.inference_mode():
            x = torch.randn(1, 3, 224, 224)
            cam = gradcam(lite, x, target_class=1)
        assert cam.shape == (224, 224) and cam.max() == pytest.approx(1.0)
    finally:
        for param in lite.parameters():
            param.requires_grad_(True)


def test_vision_transformer_map_from_tokens():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=2).eval()
    cam = gradcam(model, torch.randn(1, 3, 224, 224))
    assert cam.shape == (224, 224) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert cam.max() == pytest.approx(1.0)


def test_explicit_layer_by_name(lite):
    cam = gradcam(lite, torch.randn(1, 3, 224, 224), layer="blocks.5")
    assert cam.shape == (224, 224) and cam.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- it points at the evidence


def _quadrant_pictures(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise everywhere; only the top-left quadrant tells the classes apart: horizontal stripes
    (class 0) or vertical stripes (class 1), at a random phase and contrast."""
    size, half = 32, 16
    x = torch.rand(count, 3, size, size, generator=generator) * 2 - 1
    y = torch.randint(0, 2, (count,), generator=generator)
    rows = torch.arange(half).view(half, 1).expand(half, half)
    cols = rows.t()
    for i in range(count):
        phase = int(torch.randint(0, 2, (1,), generator=generator))
        lines = cols if y[i] == 1 else rows
        pattern = ((lines + phase) % 2).float() * 2 - 1
        contrast = 0.6 + 0.4 * float(torch.rand(1, generator=generator))
        x[i, :, :half, :half] = pattern * contrast + 0.2 * x[i, :, :half, :half]
    return x, y


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )


def test_map_is_highest_where_the_classes_differ():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = _tiny_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        x, y = _quadrant_pictures(32, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x, y = _quadrant_pictures(16, generator)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.9, "the tiny model did not learn the task; the map would mean nothing"

    name, _ = find_cam_layer(model)
    assert name == "6"  # the last convolution (8 x 8), not a pooling layer
    inside, outside = [], []
    for i in range(len(x)):
        cam = gradcam(model, x[i], target_class=int(y[i]))
        assert cam.shape == (32, 32)
        mask = np.zeros((32, 32), dtype=bool)
        mask[:16, :16] = True
        inside.append(cam[mask].mean())
        outside.append(cam[~mask].mean())
    inside, outside = np.array(inside), np.array(outside)
    assert inside.mean() > 2 * outside.mean()
    assert (inside > outside).mean() >= 0.8  # picture by picture, not only on average


# --------------------------------------------------------------------------- pictures


def test_overlay_blends_a_heat_map_of_the_picture_size():
    picture = Image.new("RGB", (90, 60), (128, 128, 128))
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[:3, :3] = 1.0
    blended = overlay(picture, cam, alpha=0.5)
    assert blended.size == (90, 60) and blended.mode == "RGB"
    pixels = np.asarray(blended).astype(int)
    hot, cold = pixels[5, 5], pixels[55, 85]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where the map is high, blue where low
    assert np.array_equal(np.asarray(overlay(picture, cam, alpha=0.0)), np.asarray(picture))


def test_heat_colours_run_from_cold_to_hot():
    colours = heat_colours(np.linspace(0, 1, 5, dtype=np.float32).reshape(1, 5))[0].astype(int)
    assert colours[0][2] > colours[0][0] and colours[-1][0] > colours[-1][2]
    assert heat_colours(np.array([[-1.0, 2.0]])).shape == (1, 2, 3)  # out-of-range values are clipped
