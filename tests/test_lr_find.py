"""The learning-rate range test."""

from __future__ import annotations

import math

import pytest

from transfer.training.config import TrainConfig
from transfer.training.lr_find import LRFindError, find_learning_rate, lr_range_test, suggest_lr


def test_the_suggestion_is_where_the_loss_falls_fastest():
    # A loss that is flat, falls steeply around lr = 1e-3, then explodes past 1e-1.
    def loss_at(lr: float) -> float:
        x = math.log10(lr)
        return 2.0 / (1 + math.exp(4 * (x + 3))) + (0.0 if x < -1 else 50 * (x + 1) ** 2) + 0.1

    result = lr_range_test(loss_at, start_lr=1e-6, end_lr=10, num_steps=100, smoothing=0.0)
    assert 2e-4 < result.suggestion < 5e-3
    assert result.suggestion < result.min_loss_lr
    assert result.lrs == sorted(result.lrs) and result.lrs[-1] < 10  # stopped once the loss diverged


def test_a_flat_curve_falls_back_to_a_tenth_of_the_best_rate_within_the_rates_tried():
    assert suggest_lr([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 1.0, 1.0, 1.2]) == pytest.approx(1e-4)
    assert suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 1.0, 1.0]) == pytest.approx(1e-3)  # never below the first rate


def test_a_loss_that_is_never_finite_is_reported():
    with pytest.raises(LRFindError):
        lr_range_test(lambda lr: math.nan)


@pytest.mark.parametrize("method", ["features", "finetune"])
def test_find_learning_rate_on_a_real_model(method, tiny_dataset):
    config = TrainConfig.for_method(method, dataset=str(tiny_dataset), image_size=32, batch_size=8, device="cpu")
    result = find_learning_rate(config, num_steps=15 if method == "finetune" else 40)
    assert math.isfinite(result.suggestion) and 1e-7 <= result.suggestion <= 10.0
    assert len(result.lrs) == len(result.losses) >= 5
    assert all(math.isfinite(x) for x in result.losses)


def test_transfer_lr_find_prints_a_suggestion(tiny_dataset, capsys):
    import json

    from transfer.cli.main import main

    code = main(["lr-find", str(tiny_dataset), "--image-size", "32", "--steps", "20", "--device", "cpu", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and math.isfinite(result["suggestion"]) and result["suggestion"] > 0
    assert len(result["lrs"]) == len(result["losses"])
