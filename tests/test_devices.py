"""CPU speed settings: bfloat16 autocast where the CPU has bfloat16 instructions, channels-last
batches and model, and a bfloat16 training step that stays finite and close to float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transfer.core.devices as devices
from transfer.data.augment import augment_batch, eval_batch, get_preset
from transfer.data.picture import Preprocessing
from transfer.models.backbones import load_backbone
from transfer.training.config import TrainConfig
from transfer.models.heads import head_module, replace_head
from transfer.training.tasks import ImageTask

PREP = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)  # squares of 37


def bank_of(n: int, side: int = 37) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"avx2", "amx_tile", "amx_bf16"}, True),
    ({"avx2", "avx512f", "avx512_vnni"}, False),
    (set(), False),
])
def test_auto_precision_on_the_cpu_follows_its_bfloat16_instructions(monkeypatch, flags, native):
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    setup = devices.resolve_device("cpu", "auto")
    assert setup.precision == ("bf16" if native else "fp32")
    assert setup.channels_last
    assert devices.resolve_device("cpu", "fp32").amp_dtype is None
    assert devices.resolve_device("cpu", "bf16").amp_dtype is torch.bfloat16


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = devices.cpu_flags()
    assert isinstance(flags, set)
    if flags:  # x86 Linux lists "flags"; other machines have none, and get float32
        assert "fpu" in flags


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_batches_come_out_channels_last_and_normalised(preset):
    x = augment_batch(bank_of(4), PREP, get_preset(preset), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    low = (0 - max(PREP.mean)) / min(PREP.std)
    high = (1 - min(PREP.mean)) / min(PREP.std)
    assert low - 1e-4 <= float(x.min()) and float(x.max()) <= high + 1e-4


def test_normalising_before_resampling_equals_normalising_after():
    """Without colour jitter the batch is normalised before the crop is resampled (one pass
    fewer); resampling is linear with repeated borders, so the values are the same."""
    bank = bank_of(3)
    params = torch.tensor([[0.6, 0.7, 0.2, -0.1, -1.0, 1.0, 1.0, 1.0]]).repeat(3, 1)
    fast = augment_batch(bank, PREP, get_preset("light"), params=params)
    raw = bank.permute(0, 3, 1, 2).float() / 255
    theta = torch.tensor([[[-0.6, 0.0, 0.2], [0.0, 0.7, -0.1]]]).repeat(3, 1, 1)
    grid = F.affine_grid(theta, [3, 3, 32, 32], align_corners=False)
    resampled = F.grid_sample(raw, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean, std = torch.tensor(PREP.mean).view(1, 3, 1, 1), torch.tensor(PREP.std).view(1, 3, 1, 1)
    assert torch.allclose(fast, (resampled - mean) / std, atol=1e-5)


def test_the_batch_given_is_never_changed():
    floats = torch.rand(2, 37, 37, 3) * 255
    before = floats.clone()
    eval_batch(floats, PREP)
    augment_batch(floats, PREP, get_preset("light"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(floats, before)


def lite0(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)  # the new head's initial weights
    model = load_backbone("efficientnet_lite0")
    replace_head(model, classes)
    return model


def image_task(model: torch.nn.Module, precision: str) -> ImageTask:
    config = TrainConfig.for_method("finetune", dataset="unused", image_size=32, device="cpu", precision=precision)
    return ImageTask(model, config, bank_of(8), bank_of(4), PREP, devices.resolve_device("cpu", precision))


def test_fine_tuning_on_the_cpu_runs_channels_last():
    task = image_task(lite0(), "fp32")
    assert task.module.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    task.module.conv_stem.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    task.train_mode(1)
    task.forward_train(torch.arange(4), 1, torch.Generator().manual_seed(0))
    task.val_logits(4)
    assert len(seen) == 2 and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)


def one_step(task: ImageTask) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Loss of one training step, the head's gradient and the gradient of everything trained."""
    task.train_mode(1)
    logits = task.forward_train(torch.arange(8), 1, torch.Generator().manual_seed(0))
    loss = F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    loss.backward()
    head = torch.cat([p.grad.flatten() for p in head_module(task.module).parameters()])
    everything = torch.cat([p.grad.flatten() for p in task.module.parameters() if p.grad is not None])
    return float(loss.detach()), head, everything


def test_a_bfloat16_training_step_on_the_cpu_is_finite_and_close_to_float32():
    model = lite0()
    loss32, head32, all32 = one_step(image_task(model, "fp32"))
    loss16, head16, all16 = one_step(image_task(copy.deepcopy(model), "bf16"))
    assert np.isfinite(loss16) and bool(torch.isfinite(all16).all())
    assert loss16 == pytest.approx(loss32, rel=0.01)
    assert float(F.cosine_similarity(head16, head32, dim=0)) > 0.99
    # Deep in the backbone, tiny 32-pixel pictures and a fresh head leave gradients small enough
    # for bfloat16's rounding to show; their direction still agrees.
    assert float(F.cosine_similarity(all16, all32, dim=0)) > 0.5


def test_transfer_train_takes_a_precision():
    from transfer.cli import main as cli
    from transfer.cli.train import _TRAIN_SETTINGS

    args = cli.build_parser().parse_args(["train", "data", "--precision", "fp32"])
    settings = {name: getattr(args, name) for name in _TRAIN_SETTINGS}
    assert TrainConfig.for_method("finetune", dataset="data", **settings).precision == "fp32"
    default = cli.build_parser().parse_args(["train", "data"])
    assert TrainConfig.for_method("finetune", dataset="data", precision=default.precision).precision == "auto"
