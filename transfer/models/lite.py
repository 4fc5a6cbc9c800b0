"""The bundled EfficientNet-Lite0/1/2 networks, built with torch alone (no timm import).

Importing timm costs a cold worker seconds (it pulls in torchvision and its operators), yet the
three bundled backbones are small, fixed networks. This module builds them module for module
as timm's ``efficientnet_lite0/1/2`` are built - the same attribute names, the same order of
parameters, the same layers and arithmetic - so a model built here and one built by timm have
identical state dicts and outputs: runs trained with either load into the other, the BatchNorm
folding (transfer.models.fusion), head surgery (transfer.models.heads, through ``pretrained_cfg``), block
splitting (transfer.models.methods) and Grad-CAM see the same tree, and exports do not change.
tests/test_lite.py compares both on random inputs.
"""

from __future__ import annotations

import torch
from torch import nn

# name: (input size, [(repeats, kernel, stride, expansion, out channels) per stage]); the stem has
# 32 channels and the head 1280 in all three ("fix_stem_head" in the EfficientNet-Lite design).
LITE_STAGES = {
    "efficientnet_lite0": (224, [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]),
    "efficientnet_lite1": (240, [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
                                 (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)]),
    "efficientnet_lite2": (260, [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                                 (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)]),
}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm, then dropout (none here) and an activation: timm's layer of the same name and
    state, which transfer.models.fusion recognises by that name and folds into the convolution before."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _conv(channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)


class DepthwiseSeparableConv(nn.Module):
    """The first stage's block: depthwise convolution, then pointwise projection."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and channels_in == channels_out
        self.conv_dw = _conv(channels_in, channels_in, kernel, stride, groups=channels_in)
        self.bn1 = BatchNormAct2d(channels_in)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pw = _conv(channels_in, channels_out, 1)
        self.bn2 = BatchNormAct2d(channels_out, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.aa(self.bn1(self.conv_dw(x))))
        x = self.bn2(self.conv_pw(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class InvertedResidual(nn.Module):
    """MobileNetV2's block: pointwise expansion, depthwise convolution, pointwise projection."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        middle = channels_in * expansion
        self.has_skip = stride == 1 and channels_in == channels_out
        self.conv_pw = _conv(channels_in, middle, 1)
        self.bn1 = BatchNormAct2d(middle)
        self.conv_dw = _conv(middle, middle, kernel, stride, groups=middle)
        self.bn2 = BatchNormAct2d(middle)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pwl = _conv(middle, channels_out, 1)
        self.bn3 = BatchNormAct2d(channels_out, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.se(self.aa(self.bn2(self.conv_dw(x))))
        x = self.bn3(self.conv_pwl(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class GlobalAveragePool(nn.Module):
    """Average over the picture, flattened to ``(batch, channels)``."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with an ImageNet classifier (``classifier``), timm's layout and interface:
    ``forward_features``, ``forward_head``, ``num_features`` and ``pretrained_cfg``."""

    def __init__(self, name: str, num_classes: int = 1000):
        super().__init__()
        input_size, stages = LITE_STAGES[name]
        self.num_features = HEAD_CHANNELS
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, 2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS)
        self.blocks = nn.Sequential(*self._stages(stages))
        self.conv_head = _conv(stages[-1][4], HEAD_CHANNELS, 1)
        self.bn2 = BatchNormAct2d(HEAD_CHANNELS)
        self.global_pool = GlobalAveragePool()
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self.pretrained_cfg = {"architecture": name, "input_size": (3, input_size, input_size),
                               "num_classes": num_classes, "first_conv": "conv_stem", "classifier": "classifier",
                               "pool_size": (input_size // 32, input_size // 32)}
        self._initialise()

    @staticmethod
    def _stages(stages) -> list[nn.Sequential]:
        built, channels = [], STEM_CHANNELS
        for repeats, kernel, stride, expansion, out in stages:
            blocks = []
            for index in range(repeats):
                step = stride if index == 0 else 1
                blocks.append(DepthwiseSeparableConv(channels, out, kernel, step) if expansion == 1
                              else InvertedResidual(channels, out, kernel, step, expansion))
                channels = out
            built.append(nn.Sequential(*blocks))
        return built

    def _initialise(self) -> None:
        """Random starting weights for training from scratch, in the EfficientNet recipe (the
        pretrained path overwrites them)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                module.weight.data.normal_(0, (2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.data.fill_(1.0)
                module.bias.data.zero_()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / (module.weight.size(0) ** 0.5)
                module.weight.data.uniform_(-bound, bound)
                module.bias.data.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_lite(name: str, num_classes: int = 1000) -> EfficientNetLite:
    """``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2`` with random weights."""
    return EfficientNetLite(name, num_classes)
