"""The training loop inside real runs: what trains, determinism, out-of-memory retries,
checkpoints, cancel and resume through real worker processes, and ``transfer train --json``.

Everything runs on tiny generated pictures at 32 px with the bundled EfficientNet-Lite0, so
each training run takes a second or two on a laptop CPU.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import warnings as warnings_module
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from waiting import wait_for

import transfer.training.build as build_module
import transfer.training.loop as loop_module
from transfer.training.store import CHECKPOINT_FORMAT, Store
from transfer.training.config import ConfigError, TrainConfig
from transfer.runtime.jobs import JobManager
from transfer.core.files import lock_is_held
from transfer.models.methods import create_model, prepare_model
from transfer.models.model_io import load_trained_model
from transfer.core.runs import CANCELLED, FINISHED, INTERRUPTED, Cancelled, RunDir
from transfer.training.run import METRICS_FILE, MODEL_INFO_FILE, PREDICTIONS_FILE, Trainer, lr_factor, train_run

SMALL = dict(image_size=32, device="cpu")


def make_run(tmp_path: Path, data: Path, method: str = "features", **overrides) -> RunDir:
    settings = {**SMALL, "epochs": 2, "batch_size": 8, **overrides}
    config = TrainConfig.for_method(method, dataset=str(data), **settings)
    return RunDir.create(tmp_path / "runs", config.to_dict())


@pytest.fixture
def recorded_initial_state(monkeypatch):
    """Wraps ``create_model`` where the trainer builds its model, to keep a copy of the weights it starts from."""
    initial = {}

    def recording_create_model(*args, **kwargs):
        model = create_model(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(build_module, "create_model", recording_create_model)
    return initial


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# --------------------------------------------------------------------------- what trains


def test_feature_transfer_trains_only_the_head(tmp_path, tiny_dataset, recorded_initial_state):
    run = make_run(tmp_path, tiny_dataset, "features", epochs=3, lr=1e-2)
    train_run(run)
    after = load_file(str(run.weights_path))
    changed = changed_keys(recorded_initial_state, after)
    head_keys = {k for k in after if k.startswith("classifier.")}
    assert changed == head_keys  # BatchNorm statistics of the backbone included: nothing else moved
    assert run.state == FINISHED


def test_finetune_trains_the_head_and_the_last_blocks_only(tmp_path, tiny_dataset, recorded_initial_state):
    run = make_run(tmp_path, tiny_dataset, "finetune", train_blocks=2, lr=1e-2, augmentation="none")
    train_run(run)
    after = load_file(str(run.weights_path))
    changed = changed_keys(recorded_initial_state, after)

    reference = create_model("efficientnet_lite0", 3, "finetune")
    plan = prepare_model(reference, "finetune", lr=1e-3, train_blocks=2)
    names = {id(p): n for n, p in reference.named_parameters()}
    frozen = {names[id(p)] for block in plan.frozen_blocks for p in block.params}
    trained = {names[id(p)] for group in plan.param_groups for p in group["params"]}
    assert frozen and trained
    assert not (changed & frozen)
    assert {k for k in after if k.startswith("classifier.")} <= changed
    assert len(changed & trained) >= 0.8 * len(trained)  # a few parameters may get zero gradients


@pytest.mark.parametrize("freeze", [True, False])
def test_finetuning_keeps_the_pretrained_batchnorm_statistics_unless_told(tmp_path, tiny_dataset,
                                                                          recorded_initial_state, freeze):
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=1, freeze_batchnorm=freeze)
    train_run(run)
    after = load_file(str(run.weights_path))
    moved = {k for k in changed_keys(recorded_initial_state, after) if "running_" in k}
    assert bool(moved) is not freeze
    assert any(k.endswith("bn1.weight") for k in changed_keys(recorded_initial_state, after))  # scales learn


def test_scratch_starts_from_random_weights_and_trains_everything(tmp_path, tiny_dataset, recorded_initial_state):
    run = make_run(tmp_path, tiny_dataset, "scratch", epochs=1, lr=1e-2)
    train_run(run)
    pretrained = create_model("efficientnet_lite0", 3, "features").state_dict()
    conv = "conv_stem.weight"
    assert not torch.equal(recorded_initial_state[conv], pretrained[conv])
    after = load_file(str(run.weights_path))
    weights = [k for k in after if k.endswith(".weight")]
    assert len(changed_keys({k: recorded_initial_state[k] for k in weights}, after)) >= 0.9 * len(weights)


def test_head_only_epochs_freeze_the_backbone_first(tmp_path, tiny_dataset, recorded_initial_state, monkeypatch):
    seen = []
    original = Trainer.train_one_epoch

    def spy(self, epoch):
        result = original(self, epoch)
        backbone = [p for n, p in self.task.module.named_parameters() if not n.startswith("classifier.")]
        seen.append((epoch, any(p.requires_grad for p in backbone)))
        return result

    monkeypatch.setattr(Trainer, "train_one_epoch", spy)
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=2, head_only_epochs=1)
    train_run(run)
    assert seen == [(1, False), (2, True)]


def test_finetuning_starts_from_a_linear_probe_head(tmp_path, tiny_dataset, monkeypatch):
    heads_at_epoch_one = []
    original = Trainer.train_one_epoch

    def spy(self, epoch):
        if epoch == 1:
            heads_at_epoch_one.append({k: v.clone() for k, v in self.model.head().state_dict().items()})
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", spy)
    probed = make_run(tmp_path, tiny_dataset, "finetune", epochs=1)
    train_run(probed)
    random_head = make_run(tmp_path, tiny_dataset, "finetune", epochs=1, probe_init=False)
    train_run(random_head)
    probe = [e for e in probed.events("info") if "probe_train_accuracy" in e]
    assert len(probe) == 1 and probe[0]["probe_train_accuracy"] > 0.5
    assert not [e for e in random_head.events("info") if "probe_train_accuracy" in e]
    assert changed_keys(heads_at_epoch_one[0], heads_at_epoch_one[1])  # the probe moved the head


# --------------------------------------------------------------------------- outputs


def test_a_finished_run_has_everything_the_pages_read(tmp_path, tiny_dataset):
    # A hidden layer: the head trains for epochs (a plain linear head is fit in closed form, below).
    run = make_run(tmp_path, tiny_dataset, "features", epochs=3, hidden=8)
    train_run(run)
    status = run.status()
    assert status["state"] == FINISHED and status["epoch"] == 3
    assert 0.0 <= status["best_val_accuracy"] <= 1.0
    assert status["val_total"] == 6 and status["val_correct"] == round(status["best_val_accuracy"] * 6)
    assert "cv_accuracy" not in status  # no cross-validation in an epoch loop
    assert run.labels() == ["blue", "green", "red"]

    steps, epochs = run.events("step"), run.events("epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "elapsed", "eta", "seconds"):
        assert key in epochs[-1]
    assert steps and {"loss", "accuracy", "lr", "images_per_s", "eta", "step", "steps"} <= set(steps[-1])

    predictions = json.loads((run.path / PREDICTIONS_FILE).read_text())
    assert predictions["classes"] == ["blue", "green", "red"]
    assert len(predictions["predictions"]) == len([e for e in predictions["predictions"]])
    first = predictions["predictions"][0]
    assert set(first) == {"path", "sha256", "label", "predicted", "probabilities", "novelty"}
    assert abs(sum(first["probabilities"]) - 1.0) < 1e-4
    assert not Path(first["path"]).is_absolute()
    metrics = json.loads((run.path / METRICS_FILE).read_text())
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert sum(map(sum, metrics["confusion"])) == len(predictions["predictions"])

    model, labels, prep = load_trained_model(run.path)
    assert labels == ["blue", "green", "red"] and prep.input_size == 32
    info = json.loads((run.path / MODEL_INFO_FILE).read_text())
    assert info["backbone"] == "efficientnet_lite0" and info["num_classes"] == 3


def test_a_linear_feature_head_is_fit_once_and_says_what_it_chose(tmp_path, tiny_dataset):
    run = make_run(tmp_path, tiny_dataset, "features", epochs=3)
    train_run(run)
    status = run.status()
    assert status["state"] == FINISHED and status["epoch"] == 1 and status["epochs"] == 1
    assert [e["epoch"] for e in run.events("epoch")] == [1] and not run.events("step")
    fit = [e for e in run.events("info") if "head_fit" in e][0]
    assert fit["head_fit"]["normalisation"] == "unit length" and fit["head_fit"]["C"] > 0
    assert fit["head_fit"]["curve"][-1] <= fit["head_fit"]["curve"][0]
    # Lite0's own ImageNet classifier guides the fit (tests/test_head_fit.py shows what that does).
    assert fit["head_fit"]["source_classes"] == 1000 and "own 1,000 ImageNet classes" in fit["message"]
    assert "does not apply" in fit["message"]  # --epochs 3 was asked for
    # 8 training and 2 validation pictures per class: cross-validated over all 30 of them.
    assert status["val_total"] == 6 and 0 <= status["val_correct"] <= 6
    assert status["cv_total"] == 30 and status["cv_folds"] == 5
    assert status["cv_accuracy"] == pytest.approx(status["cv_correct"] / 30)
    assert fit["cv_correct"] == status["cv_correct"]


def test_the_saved_model_reproduces_the_validation_predictions(tmp_path, tiny_dataset):
    from transfer.data.augment import eval_batch, stack_squares
    from transfer.data.cache import DecodedImageCache
    from transfer.data.samples import Dataset

    # fp32: the reloaded model runs in full precision; bf16 autocast would differ by ~1e-3.
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=1, augmentation="none", precision="fp32")
    train_run(run)
    model, labels, prep = load_trained_model(run.path)
    dataset = Dataset.from_dict(run.config["dataset"]) if isinstance(run.config["dataset"], dict) else None
    predictions = json.loads((run.path / PREDICTIONS_FILE).read_text())["predictions"]
    samples = {s.sha256: s for s in (dataset.val if dataset else [])}
    if not samples:
        from transfer.data.dataset import load_dataset

        samples = {s.sha256: s for s in load_dataset(tiny_dataset).val}
    ordered = [samples[p["sha256"]] for p in predictions]
    bank = stack_squares(DecodedImageCache().decode_all(ordered, prep.resize_size), prep.resize_size)
    with torch.inference_mode():
        probabilities = torch.softmax(model(eval_batch(bank, prep)), dim=1)
    expected = torch.tensor([p["probabilities"] for p in predictions])
    assert torch.allclose(probabilities, expected, atol=1e-3)


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_result_on_cpu(tmp_path, tiny_dataset):
    results = []
    for seed in (3, 3, 4):
        run = make_run(tmp_path, tiny_dataset, "finetune", epochs=2, seed=seed)
        train_run(run)
        losses = [e["train_loss"] for e in run.events("epoch")]
        results.append((losses, load_file(str(run.weights_path))))
    (losses_a, weights_a), (losses_b, weights_b), (losses_c, _) = results
    assert losses_a == losses_b
    assert not changed_keys(weights_a, weights_b)
    assert losses_a != losses_c


# --------------------------------------------------------------------------- out of memory


def test_out_of_memory_halves_the_batch_and_retries(tmp_path, tiny_dataset, monkeypatch):
    original = loop_module.train_step
    attempts = []

    def tight_memory(parts, indices, epoch):
        attempts.append(len(indices))
        if len(indices) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(parts, indices, epoch)

    recovering_inside_except = []
    monkeypatch.setattr(loop_module, "train_step", tight_memory)
    monkeypatch.setattr(loop_module, "release_cached_memory",
                        lambda setup: recovering_inside_except.append(sys.exc_info()[0] is not None))
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=2, batch_size=16)
    train_run(run)
    # The memory is released once the traceback holding the failed step's tensors is gone.
    assert recovering_inside_except == [False, False]
    warnings = run.events("warning")
    assert [w["batch_size"] for w in warnings] == [8, 4]
    assert "halved" in warnings[0]["message"]
    assert attempts[:3] == [16, 8, 4]
    assert run.status()["batch_size"] == 4 and run.state == FINISHED
    assert [e["epoch"] for e in run.events("epoch")] == [1, 2]


def test_other_errors_are_not_mistaken_for_out_of_memory(tmp_path, tiny_dataset, monkeypatch):
    def broken(parts, indices, epoch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(loop_module, "train_step", broken)
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=1)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_run(run)
    assert not run.events("warning")


# --------------------------------------------------------------------------- checkpoints in-process


def test_cancel_keeps_the_last_finished_epoch(tmp_path, tiny_dataset, monkeypatch):
    original = Trainer.train_one_epoch

    def cancel_during_epoch_two(self, epoch):
        if epoch == 2:
            self.run.request_cancel()
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", cancel_during_epoch_two)
    run = make_run(tmp_path, tiny_dataset, "finetune", epochs=3)
    with pytest.raises(Cancelled):
        train_run(run)
    assert [e["epoch"] for e in run.events("epoch")] == [1]
    assert run.status()["epoch"] == 1
    checkpoint = torch.load(run.checkpoint_path, weights_only=True)
    assert checkpoint["epoch"] == 1
    model, labels, _ = load_trained_model(run.path)  # the first epoch's model is usable
    assert labels == ["blue", "green", "red"]

    run.clear_cancel()
    monkeypatch.setattr(Trainer, "train_one_epoch", original)
    train_run(run)  # resumes after epoch 1
    assert [e["epoch"] for e in run.events("epoch")] == [1, 2, 3]
    assert run.events("info")[-1]["message"].startswith("Resuming") or any(
        e.get("start_epoch") == 2 for e in run.events("info"))


def test_resuming_gives_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_dataset, monkeypatch):
    straight = make_run(tmp_path, tiny_dataset, "features", epochs=4, seed=5, hidden=8)
    train_run(straight)

    original = Trainer.train_one_epoch

    def stop_in_epoch_three(self, epoch):
        if epoch == 3:
            raise Cancelled()
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", stop_in_epoch_three)
    broken = make_run(tmp_path, tiny_dataset, "features", epochs=4, seed=5, hidden=8)
    with pytest.raises(Cancelled):
        train_run(broken)
    monkeypatch.setattr(Trainer, "train_one_epoch", original)
    train_run(broken)
    assert [e["val_loss"] for e in broken.epoch_history()] == [e["val_loss"] for e in straight.epoch_history()]


# --------------------------------------------------------------------------- real worker processes


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def slow_epochs_config(data: Path, epochs: int = 3) -> dict:
    # Batch size 4 on 48 training pictures: 12 steps an epoch, long enough to be killed mid-epoch.
    return TrainConfig.for_method("finetune", dataset=str(data), epochs=epochs, batch_size=4, augmentation="none",
                                  **SMALL).to_dict()


@pytest.fixture
def bigger_dataset(tmp_path, write_class_folders) -> Path:
    return write_class_folders(tmp_path / "bigger", {"red": 20, "green": 20, "blue": 20})


def test_resume_after_the_worker_is_killed_mid_epoch(tmp_path, bigger_dataset):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(slow_epochs_config(bigger_dataset, epochs=2))
    # The status says epoch 1 only after its checkpoint is saved; the worker is then in epoch 2.
    wait_for(lambda: run.status().get("epoch") == 1, "the first epoch", timeout=120, interval=0.005)
    pid = run.status()["pid"]
    os.kill(pid, signal.SIGKILL)
    assert [e["epoch"] for e in run.events("epoch")] == [1], "epoch 2 finished before the kill; use more steps"
    # A killed process shows as a zombie a moment before the kernel drops its file locks.
    wait_for(lambda: not process_alive(pid) and not lock_is_held(run.worker_lock_path),
             "the killed worker to let go of its lock", timeout=120)

    fresh = JobManager(tmp_path / "runs")  # as after a restart: finds the dead worker
    assert run.state == INTERRUPTED
    fresh.resume(run)
    final = fresh.wait(run, timeout=300)
    assert final["state"] == FINISHED, final.get("message")
    assert [e["epoch"] for e in run.events("epoch")] == [1, 2]  # epoch 1 was not trained again
    assert any(e.get("start_epoch") == 2 for e in run.events("info"))
    assert final["epoch"] == 2


def test_cancel_through_the_job_manager(tmp_path, bigger_dataset):
    manager = JobManager(tmp_path / "runs")
    run = manager.submit(slow_epochs_config(bigger_dataset, epochs=20))
    wait_for(lambda: run.status().get("epoch") == 1, "the first epoch", timeout=120)
    manager.cancel(run)
    final = manager.wait(run, timeout=120)
    assert final["state"] == CANCELLED
    kept = final["epoch"]
    assert 1 <= kept < 20
    assert torch.load(run.checkpoint_path, weights_only=True)["epoch"] == kept
    assert run.weights_path.exists()


def test_two_queued_runs_both_finish(tmp_path, tiny_dataset):
    manager = JobManager(tmp_path / "runs", max_parallel=1)
    config = TrainConfig.for_method("features", dataset=str(tiny_dataset), epochs=2, **SMALL).to_dict()
    first, second = manager.submit(config), manager.submit(config)
    assert manager.wait(first, timeout=300)["state"] == FINISHED
    assert manager.wait(second, timeout=300)["state"] == FINISHED
    # The second run found the first one's features in the cache.
    infos = [e for e in second.events("info") if "features_cached" in e]
    assert infos and infos[0]["features_computed"] == 0


def test_transfer_train_json(tmp_path, tiny_dataset, capsys):
    from transfer.cli.main import main

    code = main(["train", str(tiny_dataset), "--epochs", "2", "--image-size", "32", "--device", "cpu",
                 "--runs-dir", str(tmp_path / "runs"), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert code == 0
    for key in ("run_dir", "method", "backbone", "epochs", "val_accuracy", "best_val_accuracy", "seconds"):
        assert key in result
    # The linear head is fit once, whatever --epochs says.
    assert result["method"] == "features" and result["backbone"] == "efficientnet_lite0" and result["epochs"] == 1
    assert result["epochs_planned"] == 2
    assert result["val_total"] == 6 and result["cv_total"] == 30 and result["cv_folds"] == 5
    assert result["cv_accuracy"] == pytest.approx(result["cv_correct"] / 30)
    assert Path(result["run_dir"], "model.safetensors").is_file()


def test_transfer_train_reports_bad_data_without_a_traceback(tmp_path, capsys):
    from transfer.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", str(empty), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert code == 2
    assert "error" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- config and schedules


def test_config_uses_the_method_defaults_and_overrides():
    config = TrainConfig.for_method("finetune", dataset="data", epochs=3, lr=None)
    assert config.epochs == 3 and config.lr == 1e-3 and config.label_smoothing == 0.1
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad, words", [
    ({"epochs": 0}, "Epochs"),
    ({"lr": -1.0}, "Lr"),
    ({"optimizer": "adam"}, "adamw, sgd"),
    ({"augmentation": "heavy"}, "none, light, strong"),
    ({"image_size": 8}, "Image size"),
    ({"head_only_epochs": 2}, "fine-tuning"),
])
def test_config_refuses_impossible_settings_with_a_sentence(bad, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig.for_method("features", dataset="data", **bad)


def test_config_refuses_unknown_methods_and_settings():
    with pytest.raises(ConfigError, match="Unknown method"):
        TrainConfig.for_method("distill", dataset="data")
    with pytest.raises(ConfigError, match="colour"):
        TrainConfig.from_dict({"dataset": "data", "colour": "red"})


def test_schedules_warm_up_and_anneal():
    assert lr_factor("onecycle", 0.0) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", 0.25) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0) == pytest.approx(1e-4)
    assert lr_factor("cosine", 0.05, 0.1) < lr_factor("cosine", 0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 1.0, 0.1) == pytest.approx(0.0)
    assert lr_factor("constant", 0.5, 0.1) == 1.0


# --------------------------------------------------------------------------- damaged checkpoints


# Random bytes make torch.load fail in several ways (seeds 2 and 14 give an IndexError, most
# an UnpicklingError), so forty fixed ones are tried rather than one new one per run.
@pytest.mark.parametrize("damage", ["empty", "cut short", *(f"random bytes {seed}" for seed in range(40)), "text",
                                    "other format"])
def test_a_damaged_checkpoint_is_reported_and_training_starts_again(tmp_path, damage):
    run = RunDir.create(tmp_path / "runs", {"job": "train"})
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "module": {"w": torch.zeros(1000)}}, run.checkpoint_path)
    whole = run.checkpoint_path.read_bytes()
    if damage.startswith("random bytes"):
        damaged = random.Random(int(damage.split()[-1])).randbytes(512)
    else:
        damaged = {"empty": b"", "cut short": whole[: len(whole) // 2], "text": b"not a checkpoint",
                   "other format": whole}[damage]
    run.checkpoint_path.write_bytes(damaged)
    warnings = []
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("ignore")  # torch's note about an unusual pickle protocol
        assert Store(run, None, None).load_checkpoint(warnings.append) is None
    assert len(warnings) == 1 and "damaged" in warnings[0] and "starts again from epoch 1" in warnings[0]


@pytest.mark.parametrize("error", [MemoryError(), PermissionError(13, "Permission denied"),
                                   TypeError("a bug"), RuntimeError("DefaultCPUAllocator: out of memory")])
def test_a_checkpoint_that_fails_for_another_reason_is_not_thrown_away(tmp_path, monkeypatch, error):
    run = RunDir.create(tmp_path / "runs", {"job": "train"})
    run.checkpoint_path.write_bytes(b"whatever")

    def failing_load(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", failing_load)
    warnings = []
    with pytest.raises(type(error)):
        Store(run, None, None).load_checkpoint(warnings.append)
    assert warnings == []
