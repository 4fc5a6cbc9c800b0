"""Feature transfer's head fit in closed form (transfer.training.head_fit) and class balancing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transfer.training import head_fit
from transfer.training.head_fit import (DEFAULT_STRENGTH, STRENGTHS, balanced_class_weights, class_mean_prior,
                                        classes_are_even, cross_validate_all, fit_linear_head)


def clusters(counts: list[int], *, spread: float = 1.0, seed: int = 0, dim: int = 32):
    """Non-negative feature vectors (as after a ReLU) around one centre per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(len(counts), dim, generator=generator) * 3
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    features = (centres[targets] + spread * torch.randn(len(targets), dim, generator=generator)).abs()
    return features, targets


def objective_gradient(fit, features, targets, classes):
    """The gradient of the fit's own objective at its solution (in the unit-length space)."""
    z = features / features.norm(dim=1, keepdim=True)
    weight = (fit.weight * features.norm(dim=1).mean()).clone().requires_grad_(True)
    sample_weight = balanced_class_weights(targets, classes)[targets]
    prior = class_mean_prior(z, targets, classes)
    penalty = 1.0 / (fit.strength * float(sample_weight.sum()))
    losses = F.cross_entropy(z @ weight.T + fit.bias, targets, reduction="none")
    loss = (losses * sample_weight).sum() / sample_weight.sum() + 0.5 * penalty * (weight - prior).pow(2).sum()
    loss.backward()
    return weight.grad


def test_the_fit_converges_to_the_optimum_of_its_objective():
    features, targets = clusters([30, 30, 30], spread=2.0)
    fit = fit_linear_head(features, targets, 3, strength=1.0)
    assert objective_gradient(fit, features, targets, 3).abs().max() < 1e-4
    assert fit.curve[-1] < fit.curve[0] and fit.iterations > 1
    assert fit.curve[-1] == pytest.approx(min(fit.curve))


def test_the_fitted_head_is_an_ordinary_linear_layer():
    features, targets = clusters([10, 10])
    fit = fit_linear_head(features, targets, 2)
    head = torch.nn.Linear(32, 2)
    fit.load_into(head)
    with torch.no_grad():
        assert torch.equal(head(features).argmax(1), (features @ fit.weight.T + fit.bias).argmax(1))
    assert (head(features).argmax(1) == targets).float().mean() > 0.9
    with pytest.raises(TypeError):
        fit.load_into(torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.Linear(8, 2)))


def small_class_recall(monkeypatch, weighted: bool) -> float:
    train_x, train_y = clusters([3, 60], spread=2.0, seed=2)
    test_x, test_y = clusters([300, 300], spread=2.0, seed=2)  # same centres (same seed), more pictures
    if not weighted:
        monkeypatch.setattr(head_fit, "balanced_class_weights", lambda t, n: torch.ones(n))
    fit = fit_linear_head(train_x, train_y, 2)
    monkeypatch.undo()
    assert torch.equal(fit.bias, torch.zeros(2))  # uneven: no bias to learn the class sizes
    predicted = (test_x @ fit.weight.T + fit.bias).argmax(1)
    return float((predicted[test_y == 0] == 0).float().mean())


def test_uneven_classes_tilt_the_head_less_toward_the_big_one(monkeypatch):
    assert not classes_are_even(torch.tensor([0] * 3 + [1] * 60), 2)
    weighted, unweighted = small_class_recall(monkeypatch, True), small_class_recall(monkeypatch, False)
    assert weighted > unweighted + 0.2, (weighted, unweighted)


def test_balanced_class_weights_make_every_class_weigh_the_same():
    weights = balanced_class_weights(torch.tensor([0, 0, 0, 1, 3]), 4)
    assert weights.tolist() == pytest.approx([5 / 9, 5 / 3, 0.0, 5 / 3])
    assert balanced_class_weights(torch.tensor([0, 1, 0, 1]), 2).tolist() == [1.0, 1.0]


def test_the_strength_is_chosen_by_stratified_cross_validation():
    features, targets = clusters([4, 7, 12], spread=2.0)
    fit = fit_linear_head(features, targets, 3)
    search = fit.strength_search
    assert search is not None and search.folds == 4  # the smallest class has 4 pictures
    assert set(search.scores) == set(STRENGTHS) and fit.strength in STRENGTHS
    assert search.scores[fit.strength] == max(search.scores.values())
    assert search.total == len(targets)


def test_one_picture_per_class_uses_the_measured_default():
    features, targets = clusters([1, 1, 1])
    fit = fit_linear_head(features, targets, 3)
    assert fit.strength == DEFAULT_STRENGTH and fit.strength_search is None
    assert (features @ fit.weight.T + fit.bias).argmax(1).tolist() == [0, 1, 2]
    # With one picture per class the head starts as, and stays close to, the class means.
    assert classes_are_even(targets, 3)


def test_cross_validation_over_all_labelled_pictures():
    features, targets = clusters([6, 9], spread=0.5)
    result = cross_validate_all(features, targets, 2, 1.0)
    assert result.total == 15 and result.folds == 5 and result.accuracy == result.correct / 15
    assert result.accuracy > 0.9
    assert cross_validate_all(features[:7], targets[:7], 2, 1.0) is None  # one picture of class 1


def test_the_fit_on_a_thousand_pictures_keeps_every_fold_and_strength(monkeypatch):
    calls = []
    solve = head_fit._solve
    monkeypatch.setattr(head_fit, "_solve", lambda *a, **k: calls.append(a[3]) or solve(*a, **k))
    features, targets = clusters([100] * 10, spread=3.0, dim=64)
    fit_linear_head(features, targets, 10)
    assert len(calls) == len(STRENGTHS) * 3 + 1  # many pictures: 3 folds per strength, then the final fit


def test_the_epoch_loop_weights_uneven_classes(tmp_path, write_class_folders):
    from transfer.core.runs import RunDir
    from transfer.training.config import TrainConfig
    from transfer.training.loop import Trainer

    data = write_class_folders(tmp_path / "uneven", {"few": 5, "many": 20})
    config = TrainConfig.for_method("features", dataset=str(data), image_size=32, hidden=8, epochs=1, device="cpu")
    trainer = Trainer(RunDir.create(tmp_path / "runs", config.to_dict()), config)
    trainer.prepare()
    counts = torch.bincount(trainer.data.train_targets, minlength=2).float()
    assert trainer.parts.class_weights.tolist() == pytest.approx((counts.sum() / (2 * counts)).tolist())


# --------------------------------------------------------------------------- guided by the backbone's classes


def test_a_lifted_head_folds_into_the_same_head_on_the_features():
    generator = torch.Generator().manual_seed(3)
    source = torch.randn(50, 16, generator=generator)
    unit = F.normalize(torch.rand(40, 16, generator=generator), dim=1)
    lift = head_fit.SourceLift.fit_to(unit, (source, torch.zeros(50)))
    weight = torch.randn(3, 16 + 50, generator=generator)
    assert torch.allclose(lift(unit) @ weight.T, unit @ lift.fold(weight).T, atol=1e-4)
    # The scores sit beside the unit-length features at the measured length.
    assert float((lift(unit)[:, 16:]).norm(dim=1).median()) == pytest.approx(head_fit.SOURCE_WEIGHT, rel=1e-4)


def hidden_signal(per_class: int, seed: int, dim: int = 64):
    """Two classes told apart by one direction that strong noise in every other direction hides."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(2).repeat_interleave(per_class)
    features = 3.0 * torch.randn(len(targets), dim, generator=generator)
    features[:, 0] += torch.where(targets == 0, -4.0, 4.0)
    return features, targets


def test_the_backbones_own_classes_guide_a_fit_on_few_pictures():
    # The backbone's classifier scores the telling direction, and two unrelated ones.
    source = (torch.eye(64)[:3], torch.zeros(3))
    test_x, test_y = hidden_signal(500, seed=100)
    accuracies = {}
    for guided in (False, True):
        hits = []
        for seed in range(8):
            train_x, train_y = hidden_signal(1, seed)
            fit = fit_linear_head(train_x, train_y, 2, source=source if guided else None)
            hits.append(float(((test_x @ fit.weight.T + fit.bias).argmax(1) == test_y).float().mean()))
        accuracies[guided] = sum(hits) / len(hits)
    assert accuracies[True] > accuracies[False] + 0.1, accuracies


def test_a_guided_head_is_still_an_ordinary_linear_layer_on_the_features():
    features, targets = clusters([6, 6, 6])
    source = (torch.randn(20, 32, generator=torch.Generator().manual_seed(1)), torch.zeros(20))
    fit = fit_linear_head(features, targets, 3, source=source)
    assert fit.weight.shape == (3, 32) and fit.source_classes == 20
    assert fit.describe()["source_classes"] == 20
    assert ((features @ fit.weight.T + fit.bias).argmax(1) == targets).float().mean() > 0.9
    # A classifier of another width than the features is not used.
    assert fit_linear_head(features, targets, 3, source=(torch.randn(20, 31), torch.zeros(20))).source_classes == 0


def test_the_bundled_backbone_hands_over_its_imagenet_classifier():
    from transfer.models.backbones import pretrained_classifier

    weight, bias = pretrained_classifier("efficientnet_lite0")
    assert weight.shape == (1000, 1280) and bias.shape == (1000,)
    assert pretrained_classifier("resnet18") is None  # not bundled: its classifier is not read


def test_the_backbones_answers_start_each_class_where_the_backbone_puts_its_pictures():
    # The backbone calls class 0's pictures its class 5 and class 1's its class 7: the prior of
    # each class leans toward that score (the score part is the last 10 columns of lifted rows).
    rows = F.normalize(torch.rand(4, 16 + 10), dim=1)
    targets = torch.tensor([0, 0, 1, 1])
    answers = torch.full((4, 10), 0.05)
    answers[:2, 5], answers[2:, 7] = 0.95, 0.95
    prior = head_fit.source_guided_prior(rows, answers, targets, 2)
    assert prior[0, 16 + 5] > 0 > prior[0, 16 + 7] and prior[1, 16 + 7] > 0 > prior[1, 16 + 5]
    assert prior.norm(dim=1) == pytest.approx([head_fit.PRIOR_SCALE] * 2)
