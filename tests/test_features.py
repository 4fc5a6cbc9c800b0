"""Backbone features and their cache, and the batched picture transforms they are computed from."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import transfer.models.features as features_module
from transfer.data.augment import (
    PRESETS,
    augment_batch,
    eval_batch,
    get_preset,
    preprocessing_for,
    random_params,
    stack_squares,
    view_params,
)
from transfer.data.picture import Preprocessing, centre_square
from transfer.models.backbones import get_backbone, load_backbone
from transfer.data.cache import DecodedImageCache
from transfer.training.config import TrainConfig
from transfer.data.dataset import load_dataset
from transfer.core.devices import resolve_device
from transfer.models.features import FeatureCache, extract_features, feature_key
from transfer.models.heads import replace_head
from transfer.core.runs import RunDir
from transfer.training.run import train_run

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 0.875)  # resize side 37


def bank_of(n: int, side: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- transforms


def test_eval_batch_is_the_normalised_centre_crop():
    bank = bank_of(2)
    out = eval_batch(bank, PREP)
    assert out.shape == (2, 3, 32, 32)
    offset = (37 - 32) // 2
    manual = bank[:, offset:offset + 32, offset:offset + 32].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(out, (manual - 0.5) / 0.5, atol=1e-6)


def test_centre_square_keeps_the_middle_of_wide_and_tall_pictures():
    wide = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert centre_square(wide).shape == (4, 4, 3)
    assert (centre_square(wide) == wide[:, 1:5]).all()
    tall = np.zeros((9, 5, 3), dtype=np.uint8)
    assert centre_square(tall).shape == (5, 5, 3)
    with pytest.raises(ValueError):
        stack_squares([wide], side=5)


def test_a_full_crop_without_flip_equals_resizing_the_whole_square():
    bank = bank_of(1)
    params = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    out = augment_batch(bank, PREP, get_preset("light"), params=params)
    x = bank.permute(0, 3, 1, 2).float() / 255
    expected = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out, (expected - 0.5) / 0.5, atol=1e-4)


def test_a_negative_flip_mirrors_the_crop():
    bank = bank_of(1)
    plain = torch.tensor([[0.8, 0.8, 0.1, 0.0, 1.0, 1.0, 1.0, 1.0]])
    mirrored = plain.clone()
    mirrored[0, 4] = -1.0
    a = augment_batch(bank, PREP, get_preset("light"), params=plain)
    b = augment_batch(bank, PREP, get_preset("light"), params=mirrored)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)


def test_random_crops_stay_inside_the_picture_and_follow_the_preset():
    generator = torch.Generator().manual_seed(0)
    light = random_params(500, get_preset("light"), generator)
    width, height, cx, cy = light[:, 0], light[:, 1], light[:, 2], light[:, 3]
    assert (width <= 1).all() and (height <= 1).all()
    assert (cx.abs() <= 1 - width + 1e-6).all() and (cy.abs() <= 1 - height + 1e-6).all()
    assert (light[:, 5:] == 1.0).all()  # light: no colour jitter
    assert set(light[:, 4].tolist()) == {-1.0, 1.0}
    strong = random_params(500, get_preset("strong"), generator)
    assert strong[:, 5:].min() >= 0.6 - 1e-6 and strong[:, 5:].max() <= 1.4 + 1e-6
    assert (strong[:, 0] * strong[:, 1]).min() < (light[:, 0] * light[:, 1]).min()


def test_augmented_views_depend_only_on_the_picture_and_the_view():
    spec = get_preset("light")
    first = view_params(["a" * 64, "b" * 64], 1, spec)
    again = view_params(["b" * 64], 1, spec)
    assert torch.equal(first[1], again[0])
    assert not torch.equal(first[0], view_params(["a" * 64], 2, spec)[0])


def test_strong_augmentation_changes_colours_and_values_stay_normalised():
    bank = bank_of(8)
    out = augment_batch(bank, PREP, get_preset("strong"), generator=torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 32, 32)
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5
    assert augment_batch(bank, PREP, None).equal(eval_batch(bank, PREP))


def test_unknown_presets_and_custom_sizes():
    assert set(PRESETS) == {"none", "light", "strong"}
    with pytest.raises(Exception, match="light"):
        get_preset("wild")
    base = get_backbone("efficientnet_lite0").preprocessing
    assert preprocessing_for(base, None) is base
    small = preprocessing_for(base, 64)
    assert small.input_size == 64 and small.mean == base.mean and small.resize_size == 73


# --------------------------------------------------------------------------- the feature cache


def test_feature_keys_change_with_everything_that_changes_the_vector():
    prep = get_backbone("efficientnet_lite0").preprocessing
    base = feature_key("efficientnet_lite0", prep, 0, "light")
    assert feature_key("efficientnet_lite0", prep, 0, "strong") == base  # the centre view ignores the preset
    for other in (feature_key("efficientnet_lite1", prep, 0, "light"),
                  feature_key("efficientnet_lite0", preprocessing_for(prep, 64), 0, "light"),
                  feature_key("efficientnet_lite0", prep, 1, "light"),
                  feature_key("efficientnet_lite0", prep, 0, "light", "bf16")):
        assert other != base
    cache = FeatureCache()
    assert cache.folder(base) != cache.folder(feature_key("efficientnet_lite0", prep, 1, "light"))
    assert json.loads((cache.folder(base) / "key.json").read_text()) == base


def test_cached_features_are_what_the_head_receives(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    samples = dataset.train[:5]
    model = load_backbone("efficientnet_lite0")
    replace_head(model, 3)
    setup = resolve_device("cpu", "fp32")
    features, stats = extract_features(samples, [0], backbone="efficientnet_lite0", prep=PREP, augmentation="none",
                                       spec=None, setup=setup, load_model=lambda: model, batch_size=2)
    assert features.shape == (5, 1, 1280) and stats.computed == 5 and stats.cached == 0

    arrays = DecodedImageCache().decode_all(samples, PREP.resize_size)
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(eval_batch(stack_squares(arrays, 37), PREP)),
                                      pre_logits=True)
    assert torch.allclose(features[:, 0], expected, atol=1e-4)


def test_a_second_extraction_reads_the_cache_without_loading_the_backbone(tiny_dataset):
    samples = load_dataset(tiny_dataset).train
    setup = resolve_device("cpu", "fp32")
    model = load_backbone("efficientnet_lite0")
    replace_head(model, 3)
    common = dict(backbone="efficientnet_lite0", prep=PREP, augmentation="light", spec=get_preset("light"),
                  setup=setup)
    first, stats = extract_features(samples, [0, 1], load_model=lambda: model, **common)
    assert stats.computed == 2 * len(samples)

    def must_not_load():
        raise AssertionError("the backbone was loaded although every feature is cached")

    second, stats = extract_features(samples, [0, 1], load_model=must_not_load, **common)
    assert stats.computed == 0 and stats.cached == 2 * len(samples)
    assert torch.equal(first, second)
    assert not torch.equal(first[:, 0], first[:, 1])  # the augmented view is a different picture


def test_a_second_training_run_runs_no_backbone_forward(tiny_dataset, tmp_path, monkeypatch):
    forwards = []
    original = features_module.HeadInputCatcher.__call__

    def counting(self, x):
        forwards.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(features_module.HeadInputCatcher, "__call__", counting)
    config = TrainConfig.for_method("features", dataset=str(tiny_dataset), image_size=32, epochs=2,
                                    feature_views=2, device="cpu").to_dict()
    first = RunDir.create(tmp_path / "runs", config)
    train_run(first)
    computed = sum(forwards)
    assert computed == 2 * 24 + 6  # two views of 24 training pictures, one of 6 validation pictures
    second = RunDir.create(tmp_path / "runs", config)
    train_run(second)
    assert sum(forwards) == computed
    info = next(e for e in second.events("info") if "features_cached" in e)
    assert info["features_computed"] == 0 and info["features_cached"] == computed
    first_losses = [e["val_loss"] for e in first.events("epoch")]
    assert [e["val_loss"] for e in second.events("epoch")] == first_losses


def test_damaged_cache_files_are_computed_again(tiny_dataset):
    samples = load_dataset(tiny_dataset).val[:2]
    model = load_backbone("efficientnet_lite0")
    replace_head(model, 3)
    common = dict(backbone="efficientnet_lite0", prep=PREP, augmentation="none", spec=None,
                  setup=resolve_device("cpu", "fp32"), load_model=lambda: model)
    extract_features(samples, [0], **common)
    cache = FeatureCache()
    folder = cache.folder(feature_key("efficientnet_lite0", PREP, 0, "none", "fp32"))
    (folder / samples[0].sha256[:2] / f"{samples[0].sha256}.npy").write_bytes(b"not an array")
    _, stats = extract_features(samples, [0], **common)
    assert stats.computed == 1 and stats.cached == 1


def test_out_of_memory_while_extracting_halves_the_pieces_after_the_failed_ones_are_freed(tiny_dataset,
                                                                                            monkeypatch):
    samples = load_dataset(tiny_dataset).val[:4]
    model = load_backbone("efficientnet_lite0")
    replace_head(model, 3)
    original, pieces, recovering_inside_except = features_module._forward, [], []

    def tight_memory(catcher, images, *rest):
        pieces.append(images.shape[0])
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(catcher, images, *rest)

    monkeypatch.setattr(features_module, "_forward", tight_memory)
    monkeypatch.setattr(features_module, "release_cached_memory",
                        lambda setup: recovering_inside_except.append(sys.exc_info()[0] is not None))
    features, stats = extract_features(samples, [0], backbone="efficientnet_lite0", prep=PREP, augmentation="none",
                                       spec=None, setup=resolve_device("cpu", "fp32"), load_model=lambda: model,
                                       batch_size=4)
    assert stats.computed == 4 and features.shape[0] == 4
    assert pieces[:2] == [4, 2] and recovering_inside_except == [False, False]
