"""Backbones built for one picture size (ViT, MaxViT, timm's fixed-size models) are known to the
catalogue; defaults and the command line only give them that size; and one training step of every
catalogue family runs at the size its method's defaults give it (random weights, offline)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from transfer.models import catalogue
from transfer.models.catalogue import get_backbone
from transfer.training.config import ConfigError, TrainConfig
from transfer.models.heads import head_module
from transfer.models.methods import create_model, prepare_model


@pytest.mark.parametrize("name, fixed", [("vit_b_16", True), ("vit_h_14", True), ("maxvit_t", True),
                                         ("swin_t", False), ("swin_v2_t", False), ("resnet18", False),
                                         ("efficientnet_lite0", False)])
def test_the_catalogue_knows_which_backbones_take_one_size_only(name, fixed):
    entry = get_backbone(name)
    assert entry.fixed_input_size is fixed and entry.description_dict()["fixed_input_size"] is fixed
    own = entry.preprocessing.input_size
    assert entry.accepts_image_size(own) and entry.accepts_image_size(None)
    assert entry.accepts_image_size(own - 32) is not fixed


def test_timm_models_say_themselves_whether_their_size_is_fixed():
    pytest.importorskip("timm")
    assert catalogue._timm_entry_here("vit_tiny_patch16_224").fixed_input_size
    assert not catalogue._timm_entry_here("resnet18").fixed_input_size


def test_a_methods_default_size_gives_way_to_a_fixed_size_and_a_chosen_one_is_refused(tiny_dataset):
    assert TrainConfig.for_method("scratch", dataset=str(tiny_dataset), backbone="resnet18").image_size == 128
    assert TrainConfig.for_method("scratch", dataset=str(tiny_dataset), backbone="vit_b_16").image_size is None
    assert TrainConfig.for_method("scratch", dataset=str(tiny_dataset), backbone="vit_b_16",
                                  image_size=224).image_size == 224
    with pytest.raises(ConfigError, match="vit_b_16 takes only 224 px pictures .* not 128 px; choose 224 px"):
        TrainConfig.for_method("scratch", dataset=str(tiny_dataset), backbone="vit_b_16", image_size=128)


def test_the_command_line_refuses_a_size_a_backbone_cannot_take_with_a_sentence(tiny_dataset, capsys, tmp_path):
    from transfer.cli.main import main

    code = main(["train", str(tiny_dataset), "--backbone", "maxvit_t", "--method", "scratch", "--image-size", "160",
                 "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert code == 2
    assert "maxvit_t takes only 224 px pictures" in capsys.readouterr().out


def catalogue_families() -> list[str]:
    """The smallest member of each torchvision model family (one builder module each), and the
    bundled EfficientNet-Lite."""
    smallest: dict[str, str] = {}
    for name in catalogue.torchvision_names():
        family = torchvision.models.get_model_builder(name).__module__
        if family not in smallest or get_backbone(name).params < get_backbone(smallest[family]).params:
            smallest[family] = name
    return ["efficientnet_lite0", *sorted(smallest.values())]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scratch", "finetune"])
@pytest.mark.parametrize("name", catalogue_families())
def test_one_training_step_of_every_family_at_its_default_size(name, method, tiny_dataset):
    torch.manual_seed(0)
    config = TrainConfig.for_method(method, dataset=str(tiny_dataset), backbone=name)
    size = config.image_size or get_backbone(name).preprocessing.input_size
    model = create_model(name, 3, "scratch")  # random weights: the same network, nothing to download
    plan = prepare_model(model, method, lr=config.lr, train_blocks=config.train_blocks)
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.01)
    plan.train_mode()
    head_before = {k: v.clone() for k, v in head_module(model).state_dict().items()}
    logits = model(torch.randn(2, 3, size, size))
    logits = logits[0] if isinstance(logits, tuple) else logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 3) and math.isfinite(loss.item())
    assert any(not torch.equal(head_before[k], v) for k, v in head_module(model).state_dict().items())
