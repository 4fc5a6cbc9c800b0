"""CUDA paths of the training engine; skipped on machines without a CUDA GPU."""

from __future__ import annotations

import pytest
import torch

from transfer.data.augment import augment_batch, eval_batch, get_preset, random_params
from transfer.data.picture import Preprocessing
from transfer.models.backbones import load_backbone
from transfer.training.config import TrainConfig
from transfer.data.dataset import load_dataset
from transfer.core.devices import resolve_device
from transfer.models.features import FeatureCache, extract_features
from transfer.models.heads import replace_head
from transfer.core.runs import FINISHED, RunDir
from transfer.training.run import ImageTask, Trainer, train_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 0.875)


def test_cuda_setup_uses_autocast_and_channels_last():
    setup = resolve_device("cuda")
    assert setup.kind == "cuda" and setup.channels_last
    if torch.cuda.is_bf16_supported():
        assert setup.amp_dtype == torch.bfloat16 and not setup.use_grad_scaler
    else:
        assert setup.amp_dtype == torch.float16 and setup.use_grad_scaler
    assert resolve_device("auto").kind == "cuda"
    assert resolve_device("cuda", "fp32").amp_dtype is None


def test_augmentation_on_the_gpu_matches_the_cpu():
    bank = torch.randint(0, 256, (6, 37, 37, 3), dtype=torch.uint8)
    spec = get_preset("strong")
    params = random_params(6, spec, torch.Generator().manual_seed(0))
    on_cpu = augment_batch(bank, PREP, spec, params=params)
    on_gpu = augment_batch(bank.cuda(), PREP, spec, params=params)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-4)
    assert torch.allclose(eval_batch(bank, PREP), eval_batch(bank.cuda(), PREP).cpu(), atol=1e-6)


def test_features_on_the_gpu_match_the_cpu(tiny_dataset, tmp_path):
    samples = load_dataset(tiny_dataset).val
    model = load_backbone("efficientnet_lite0")
    replace_head(model, 3)
    common = dict(backbone="efficientnet_lite0", prep=PREP, augmentation="none", spec=None)
    on_cpu, _ = extract_features(samples, [0], setup=resolve_device("cpu", "fp32"), load_model=lambda: model,
                                 cache=FeatureCache(tmp_path / "cpu"), **common)
    on_gpu, stats = extract_features(samples, [0], setup=resolve_device("cuda", "fp32"),
                                     load_model=lambda: model.cpu(), cache=FeatureCache(tmp_path / "gpu"), **common)
    assert stats.computed == len(samples)
    # TF32 convolutions on the GPU round a little differently.
    assert ((on_cpu - on_gpu).norm() / on_cpu.norm()).item() < 1e-2


@pytest.mark.parametrize("method", ["features", "finetune", "scratch"])
def test_training_on_the_gpu_keeps_pictures_there(method, tiny_dataset, tmp_path, monkeypatch):
    seen = {}
    original = Trainer.prepare

    def spy(self):
        original(self)
        seen["task"] = self.task

    monkeypatch.setattr(Trainer, "prepare", spy)
    config = TrainConfig.for_method(method, dataset=str(tiny_dataset), image_size=64, epochs=2, batch_size=8,
                                    device="cuda")
    run = RunDir.create(tmp_path / "runs", config.to_dict())
    train_run(run)
    assert run.state == FINISHED
    task = seen["task"]
    if isinstance(task, ImageTask):
        assert task.train_bank.device.type == "cuda" and task.train_bank.dtype == torch.uint8
        assert next(task.module.parameters()).device.type == "cuda"
    else:
        assert task.train_features.device.type == "cuda"
    assert "cuda" in run.events("info")[0]["device"]


def test_a_real_cuda_out_of_memory_halves_the_batch(tmp_path, write_class_folders):
    data = write_class_folders(tmp_path / "data", {"a": 40, "b": 40, "c": 40}, size=(64, 64))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # ResNet-50 at 224 px needs several GB for 96 pictures at once but fits 12 in 2 GB.
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2 * 1024**3 / total))
    try:
        config = TrainConfig.for_method("scratch", dataset=str(data), backbone="resnet50", image_size=224,
                                        epochs=1, batch_size=96, device="cuda", precision="fp32")
        run = RunDir.create(tmp_path / "runs", config.to_dict())
        train_run(run)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    warnings = run.events("warning")
    assert warnings and all("halved" in w["message"] for w in warnings)
    assert run.status()["batch_size"] < 96 and run.state == FINISHED
