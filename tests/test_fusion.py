"""transfer.models.fusion: a frozen backbone with BatchNorm folded into its convolutions computes the
same features, faster, and the model itself is never changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer.models.backbones import load_backbone
from transfer.models.fusion import conv_norm_pairs, folded_copy
from transfer.models.heads import replace_head


def with_random_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial statistics, so folding them is really exercised."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.5, 2),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v3_small"])
def test_folding_keeps_the_output_and_leaves_the_model_alone(name):
    model = load_backbone(name, pretrained=False)
    replace_head(model, 3)
    with_random_statistics(model)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(2, 3, 96, 96)
    folded = folded_copy(model)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) and type(m) is nn.BatchNorm2d for m in folded.modules())
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert torch.allclose(expected, got, rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class SharedConvolution(nn.Module):
    """A convolution whose output feeds a BatchNorm and a shortcut: folding would change the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


def test_a_convolution_used_elsewhere_is_not_folded():
    model = with_random_statistics(SharedConvolution())
    assert conv_norm_pairs(model) == []
    assert folded_copy(model) is model


def test_an_untraceable_model_is_used_as_it_is():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x

    model = DataDependent().eval()
    assert folded_copy(model) is model
