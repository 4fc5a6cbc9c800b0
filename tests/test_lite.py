"""The bundled EfficientNet-Lite backbones built without timm (transfer.models.lite) are timm's networks:
the same state-dict names and shapes in the same order, the same outputs for the same weights,
the pretrained weights load, and building one does not import timm or torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from transfer.models.lite import LITE_STAGES, build_lite

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", sorted(LITE_STAGES))
def test_the_network_is_timms_module_for_module(name):
    ours, theirs = build_lite(name).eval(), timm.create_model(name, pretrained=False).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert [n for n, _ in ours.named_modules() if n.count(".") <= 2 and "global_pool" not in n] == \
        [n for n, _ in theirs.named_modules() if n.count(".") <= 2 and "global_pool" not in n]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert torch.allclose(ours.forward_features(x), theirs.forward_features(x), atol=1e-5)
    assert ours.pretrained_cfg["classifier"] == theirs.pretrained_cfg["classifier"]
    assert ours.pretrained_cfg["input_size"] == theirs.pretrained_cfg["input_size"]


def test_the_pretrained_backbone_loads_without_importing_timm():
    code = ("import sys; from transfer.models.backbones import load_backbone; import torch; "
            "m = load_backbone('efficientnet_lite0'); m(torch.zeros(1, 3, 64, 64)); "
            "print(sorted(n for n in ('timm', 'torchvision') if n in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
