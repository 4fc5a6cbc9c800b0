"""The transfer methods freeze, group and keep BatchNorm statistics as they promise."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from transfer.models.heads import head_module, replace_head
from transfer.models.methods import METHODS, MethodError, backbone_blocks, get_method, prepare_model


def small_model(name: str = "resnet18", classes: int = 3) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None) if name in ("resnet18", "vgg11") else \
        timm.create_model(name, pretrained=False)
    replace_head(model, classes)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(plan, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(plan.param_groups, lr=0.1, momentum=0.9)
    plan.train_mode()
    for _ in range(steps):
        images = torch.randn(4, 3, 64, 64) * 3 + 1  # far from ImageNet statistics: BN would move
        loss = nn.functional.cross_entropy(plan.model(images), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_three_methods_are_described_as_data():
    assert set(METHODS) == {"features", "finetune", "scratch"}
    assert not get_method("scratch").pretrained and get_method("features").caches_features
    for method in METHODS.values():
        assert method.summary.endswith(".") and {"epochs", "lr", "batch_size"} <= set(method.defaults)
    with pytest.raises(MethodError, match="choose one of"):
        get_method("magic")


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_features_trains_only_the_head_and_keeps_everything_else_bit_identical(name):
    model = small_model(name)
    plan = prepare_model(model, "features", lr=0.01)
    head_keys = {f"{model.transfer_head.path}.{k}" for k in head_module(model).state_dict()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in head_keys if not k.endswith("running_mean")}
    before = snapshot(model)
    train_steps(plan)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= head_keys  # BatchNorm running stats and counters did not move


def test_finetune_last_blocks_trains_those_at_a_smaller_rate():
    model = small_model("resnet18")
    blocks = backbone_blocks(model)
    assert [b.name for b in blocks] == ["conv1", "bn1", "layer1", "layer2", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    plan = prepare_model(model, "finetune", lr=0.01, train_blocks=2)
    trained_ids = {id(p) for b in blocks[-2:] for p in b.params}
    frozen_ids = {id(p) for b in blocks[:-2] for p in b.params}
    assert all(p.requires_grad for p in model.parameters() if id(p) in trained_ids)
    assert not any(p.requires_grad for p in model.parameters() if id(p) in frozen_ids)
    lrs = {g["name"]: g["lr"] for g in plan.param_groups}
    assert lrs["head"] == pytest.approx(0.01) and lrs["backbone"] == pytest.approx(0.001)

    frozen_names = {n for n, p in model.named_parameters() if id(p) in frozen_ids}
    frozen_prefixes = tuple(n.rsplit(".", 1)[0] + "." for n in frozen_names)
    before = snapshot(model)
    train_steps(plan)
    after = model.state_dict()
    for key in before:
        if key.startswith(frozen_prefixes):  # weights and BatchNorm buffers of frozen blocks
            assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("layer4"))


def test_blocks_follow_each_architecture():
    lite = [b.name for b in backbone_blocks(small_model("efficientnet_lite0"))]
    assert lite[2:9] == [f"blocks.{i}" for i in range(7)]
    vgg = [b.name for b in backbone_blocks(small_model("vgg11"))]
    assert len(vgg) >= 4 and vgg[-1].startswith("classifier")


def test_finetune_head_only_then_all():
    model = small_model("efficientnet_lite0")
    warmup = prepare_model(model, "finetune", lr=0.01, train_blocks=0)
    assert warmup.trainable_parameters() == list(head_module(model).parameters())
    full = prepare_model(model, "finetune", lr=0.01)
    assert all(p.requires_grad for p in model.parameters())
    assert len(full.trainable_parameters()) == len(list(model.parameters()))


def test_scratch_trains_everything_at_one_rate():
    plan = prepare_model(small_model("resnet18"), "scratch", lr=0.01)
    assert {g["lr"] for g in plan.param_groups} == {0.01}
    assert all(p.requires_grad for p in plan.model.parameters())


def test_vgg_frozen_classifier_layers_stay_put_while_the_new_head_learns():
    model = small_model("vgg11")
    plan = prepare_model(model, "features", lr=0.01)
    before = snapshot(model)
    plan.train_mode()
    assert not model.classifier[0].training and model.classifier[6].training
    train_steps(plan, steps=1)
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed == {"classifier.6.weight", "classifier.6.bias"}


def test_negative_block_count_is_refused():
    with pytest.raises(MethodError):
        prepare_model(small_model(), "finetune", lr=0.01, train_blocks=-1)
