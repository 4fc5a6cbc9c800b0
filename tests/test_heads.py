"""Head replacement works for every torchvision classifier and several timm families."""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch
import torchvision
from torch import nn

from transfer.models.heads import HeadError, find_classifier, head_module, replace_head

K = 3


@contextlib.contextmanager
def parameters_on_meta():
    """Build a model with its weights on the meta device while its init code runs on the CPU.

    ``torch.device("meta")`` alone breaks constructors that compute layer widths with tensors
    (RegNet); moving only the registered parameters and buffers keeps them working.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_to_meta(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_to_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter = parameter_to_meta
    nn.Module.register_buffer = buffer_to_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer


def build_on_meta(build):
    """Construct on the meta device; constructors that compute widths with tensors get real init code."""
    with _quiet():
        try:
            with torch.device("meta"):
                return build()
        except NotImplementedError:
            with parameters_on_meta():
                return build()


def forward_shape(model: nn.Module, size: int = 224, train: bool = False) -> tuple[int, ...]:
    model.to("meta").train(train)  # the new head was built on the CPU
    with torch.no_grad():
        return tuple(model(torch.zeros(2, 3, size, size, device="meta")).shape)


TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)


def test_catalogue_covers_torchvision_registry():
    assert len(TORCHVISION_MODELS) >= 80


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_every_torchvision_classifier_gets_a_k_class_head(name):
    model = build_on_meta(lambda: torchvision.models.get_model(name, weights=None))
    info = replace_head(model, K)
    assert info.num_classes == K and info.in_features > 0
    assert forward_shape(model) == (2, K)


def test_vgg16_head_takes_4096_inputs_not_512():
    """The source document hard-codes nn.Linear(512, 2); the real layer takes 4096."""
    model = build_on_meta(lambda: torchvision.models.vgg16(weights=None))
    info = replace_head(model, 2)
    assert info.path == "classifier.6"
    assert info.in_features == 4096
    assert model.classifier[6].in_features == 4096 and model.classifier[6].out_features == 2
    assert forward_shape(model) == (2, 2)


def test_squeezenet_gets_a_convolutional_head():
    model = torchvision.models.squeezenet1_1(weights=None)
    info = replace_head(model, 5)
    assert info.convolutional and info.in_features == 512
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 5)


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_auxiliary_heads_are_switched_off_in_train_mode(name):
    model = build_on_meta(lambda: torchvision.models.get_model(name, weights=None))
    replace_head(model, K)
    assert forward_shape(model, size=299, train=True) == (2, K)


TIMM_MODELS = [
    "efficientnet_lite0",
    "resnet18",
    "convnext_atto",
    "mobilenetv3_small_050",
    "vit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "regnetx_002",
    "levit_128s",
    "densenet121",
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_families_get_a_k_class_head(name):
    model = build_on_meta(lambda: timm.create_model(name, pretrained=False))
    replace_head(model, K)
    assert forward_shape(model) == (2, K)


@pytest.mark.parametrize("options", [{"dropout": 0.3}, {"hidden": 64}, {"dropout": 0.2, "hidden": 32}])
def test_head_options(options):
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    replace_head(model, 4, **options)
    head = head_module(model)
    kinds = [type(m) for m in head.modules()]
    assert (nn.Dropout in kinds) == ("dropout" in options)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == (2 if "hidden" in options else 1)
    assert linears[0].in_features == 1280
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_find_classifier_reports_a_model_without_one():
    with pytest.raises(HeadError, match="Could not find"):
        find_classifier(nn.Sequential(nn.ReLU()))


def test_zero_classes_is_refused():
    with pytest.raises(HeadError):
        replace_head(torchvision.models.resnet18(weights=None), 0)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
