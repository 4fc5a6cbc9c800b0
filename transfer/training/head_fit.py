"""Feature transfer's head, fit to its optimum on cached backbone features.

On frozen features a linear head is a convex problem (multinomial logistic regression), so it
is solved, not trained for a number of epochs: full batch, L-BFGS, to convergence. What the
fit does was chosen by measurement (``benchmarks/bench_fewshot.py``):

* features are scaled to unit length for the fit; the weights are then divided by the training
  pictures' mean feature length, so the head is an ordinary linear layer on the backbone's
  features (without a bias its answers do not depend on a picture's feature length at all);
* classes are weighted inversely to their size, and the head gets a bias only when the classes
  are about even: fit on uneven classes a bias learns the class sizes back in and tilts the
  head toward the big classes (ants and bees at 2 and 20 pictures: 0.70 with a bias, 0.91
  without), while on even classes it helps a little;
* the regularisation pulls the weights toward the scaled class means rather than toward zero:
  with one picture per class the head starts as a nearest-class-mean classifier and moves
  away from it only as far as the pictures justify;
* its strength (``C``, as in scikit-learn: larger means weaker) is chosen per data set by
  stratified cross-validation on the training pictures, with a measured default when a class
  has a single picture;
* when the backbone's own classifier is known (the bundled backbones' 1,000 ImageNet classes),
  each feature vector is fit beside its scores on those classes, and half of the starting point
  comes from the backbone's answers: a class whose pictures the backbone calls "ant" starts as
  the backbone's "ant" score. The head stays linear in the features, but the penalty then
  favours what the backbone learnt to tell apart over all other directions alike, which matters
  most with one or two pictures per class (see :data:`SOURCE_WEIGHT` and :data:`SOURCE_PRIOR`).

The result is an ordinary ``nn.Linear`` state (weight and bias in the backbone's feature
space): export, the novelty reference, Grad-CAM and prediction see the same head as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

STRENGTHS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # candidate C values for cross-validation
DEFAULT_STRENGTH = 0.3  # C when a class has a single picture (measured: bench_fewshot.py)
MAX_FOLDS = 5
LARGE_SET, LARGE_SET_FOLDS = 500, 3  # pictures from which the strength is chosen on fewer folds
MAX_ITERATIONS = 200
PRIOR_SCALE = 5.0  # how strongly the class means start the head (logit scale of the prior)
ALL_LABELLED_LIMIT = 5000  # cross-validate over every labelled picture up to this many
EVEN_RATIO = 1.5  # classes this close in size get a bias (measured: it helps even classes, hurts uneven ones)
# The scores on the backbone's own classes sit beside the unit-length features at this length
# (median over the training pictures). Measured over 1 to 4 before the answers prior below was
# added (bench_fewshot.py, 5 seeds): every value kept the head at or above the plain probe on
# every row; 2 gave the best worst case at 1 and 2 pictures per class.
SOURCE_WEIGHT = 2.0
# The share of the starting point taken from the backbone's answers (square roots of its class
# probabilities, averaged per class); the rest is the class means. Measured (bench_fewshot.py,
# 5 seeds): 0.4 to 0.6 lift ants/bees at 1 and 2 pictures per class by 3 to 4 points over the
# scores alone; 0.8 and raw probabilities help ants/bees more but fall below the probe on the
# demo data, whose classes (buildings, computers) spread over many ImageNet classes.
SOURCE_PRIOR = 0.5


@dataclass
class SourceLift:
    """Unit-length features beside their scores on the backbone's own classes: ``z -> [z, s W z]``.

    Linear in ``z``, so a head fit on lifted features folds back into a head on the features."""

    weight: torch.Tensor  # (source classes, features): the backbone's own classifier
    bias: torch.Tensor  # (source classes,)
    scale: float  # s: puts the scores' median length at SOURCE_WEIGHT

    @classmethod
    def fit_to(cls, unit_features: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor]) -> "SourceLift":
        weight, bias = (part.float().cpu() for part in source)
        lengths = (unit_features @ weight.T).norm(dim=1)
        return cls(weight, bias, SOURCE_WEIGHT / max(float(lengths.median()), 1e-12))

    def answers(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's own answers for raw features: square roots of its class probabilities."""
        return torch.softmax(features @ self.weight.T + self.bias, dim=1).sqrt()

    def __call__(self, unit_features: torch.Tensor) -> torch.Tensor:
        return torch.cat([unit_features, self.scale * unit_features @ self.weight.T], dim=1)

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """A head's weight on lifted features as the same head's weight on the features."""
        width = self.weight.shape[1]
        return weight[:, :width] + self.scale * weight[:, width:] @ self.weight


@dataclass
class CrossValidation:
    """Stratified cross-validation of the head: how many held-out pictures it got right."""

    folds: int
    correct: int
    total: int
    scores: dict = field(default_factory=dict)  # C -> held-out accuracy, when C was chosen this way

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class HeadFit:
    """A fitted linear head and what was chosen to fit it."""

    weight: torch.Tensor  # (classes, features), in the backbone's feature space
    bias: torch.Tensor  # (classes,)
    strength: float  # C
    class_weights: list[float]
    curve: list[float]  # the objective after each L-BFGS evaluation of the final fit
    iterations: int
    seconds: float = 0.0
    strength_search: CrossValidation | None = None
    normalisation: str = "unit length"
    source_classes: int = 0  # the backbone's own classes whose scores guided the fit (0: none)
    start: tuple | None = field(default=None, repr=False)  # (weight, bias) in the fit's own space

    def load_into(self, head: nn.Module) -> None:
        if not isinstance(head, nn.Linear):
            raise TypeError("Only a plain linear head is fit in closed form.")
        with torch.no_grad():
            head.weight.copy_(self.weight.to(head.weight))
            head.bias.copy_(self.bias.to(head.bias))

    def describe(self) -> dict:
        """What the Train page and the event log show."""
        described = {"normalisation": self.normalisation, "source_classes": self.source_classes,
                     "class_weights": [round(w, 4) for w in self.class_weights],
                     "C": self.strength, "iterations": self.iterations, "seconds": round(self.seconds, 3),
                     "curve": [round(v, 6) for v in self.curve]}
        if self.strength_search is not None:
            search = self.strength_search
            described["strength_cv"] = {"folds": search.folds, "scores": {str(k): round(v, 4)
                                                                          for k, v in search.scores.items()}}
        return described


def fits_in_closed_form(head: nn.Module) -> bool:
    """A plain linear layer: no hidden layer and no dropout, the convex case."""
    return isinstance(head, nn.Linear)


def balanced_class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``n / (classes * n_c)`` for each class present, so every class weighs the same in the loss
    (classes without pictures get weight 0)."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(targets) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


def fit_linear_head(features: torch.Tensor, targets: torch.Tensor, num_classes: int, *,
                    strength: float | None = None, seed: int = 0,
                    source: tuple[torch.Tensor, torch.Tensor] | None = None) -> HeadFit:
    """The head for ``features`` (N, D) and ``targets`` (N,); C by cross-validation unless given.

    ``source`` is the backbone's own classifier (weight (K, D), bias (K,)), when known: see the
    module's notes."""
    started = time.perf_counter()
    features, targets = features.float().cpu(), targets.long().cpu()
    rows, lift = _lifted(features, source)
    answers = lift.answers(features) if lift is not None else None
    search = None
    if strength is None:
        strength, search = choose_strength(rows, targets, num_classes, seed=seed, answers=answers)
    fit = _solve(rows, targets, num_classes, strength, answers=answers)
    if lift is not None:
        # _solve folded by the lifted rows' mean length; the lift itself took unit-length features.
        fit.weight = lift.fold(fit.weight) / features.norm(dim=1).mean().clamp(min=1e-12)
        fit.source_classes = lift.weight.shape[0]
    fit.strength_search = search
    fit.seconds = time.perf_counter() - started
    return fit


def _lifted(features: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor] | None
            ) -> tuple[torch.Tensor, SourceLift | None]:
    """The rows the fit sees: the features themselves, or lifted beside the source classes' scores."""
    if source is None or not len(features):
        return features, None
    weight, bias = source
    if weight.ndim != 2 or weight.shape[1] != features.shape[1] or bias.shape != weight.shape[:1]:
        return features, None  # a classifier of other features than these: not a guide
    unit = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    lift = SourceLift.fit_to(unit, source)
    return lift(unit), lift


def choose_strength(features: torch.Tensor, targets: torch.Tensor, num_classes: int, *,
                    seed: int = 0, answers: torch.Tensor | None = None) -> tuple[float, CrossValidation | None]:
    """C with the best held-out accuracy (ties: the stronger regularisation); the default when a
    class has fewer than two pictures and folds cannot hold every class."""
    counts = torch.bincount(targets, minlength=num_classes)
    smallest = int(counts[counts > 0].min()) if len(targets) else 0
    if smallest < 2:
        return DEFAULT_STRENGTH, None
    # Three folds are enough to rank the strengths once there are many pictures, and cost less.
    folds = min(LARGE_SET_FOLDS if len(targets) >= LARGE_SET else MAX_FOLDS, smallest)
    fold_of = stratified_folds(targets, folds, seed)
    hits = dict.fromkeys(STRENGTHS, 0)
    for fold in range(folds):
        held = fold_of == fold
        start = None
        for c in STRENGTHS:  # strongest first: each solution starts the next, a few iterations away
            fit = _solve(features[~held], targets[~held], num_classes, c, start=start,
                         answers=None if answers is None else answers[~held])
            start = fit.start
            hits[c] += int(((features[held] @ fit.weight.T + fit.bias).argmax(1) == targets[held]).sum())
    scores = {c: hit / len(targets) for c, hit in hits.items()}
    best = max(hits.values())
    chosen = min(c for c, hit in hits.items() if hit == best)
    return chosen, CrossValidation(folds, best, len(targets), scores)


def cross_validate(features: torch.Tensor, targets: torch.Tensor, num_classes: int, strength: float,
                   fold_of: torch.Tensor, answers: torch.Tensor | None = None) -> CrossValidation:
    """Held-out hits of heads fit with C = ``strength``, one per fold of ``fold_of``."""
    correct, total, folds = 0, 0, int(fold_of.max()) + 1
    for fold in range(folds):
        held = fold_of == fold
        if held.all() or not held.any():
            continue
        fit = _solve(features[~held], targets[~held], num_classes, strength,
                     answers=None if answers is None else answers[~held])
        predicted = (features[held] @ fit.weight.T + fit.bias).argmax(1)
        correct += int((predicted == targets[held]).sum())
        total += int(held.sum())
    return CrossValidation(folds, correct, total)


def cross_validate_all(features: torch.Tensor, targets: torch.Tensor, num_classes: int, strength: float, *,
                       seed: int = 0, source: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> CrossValidation | None:
    """Cross-validated accuracy over every labelled picture (training and validation together),
    a steadier figure than a small validation split; None when a class has fewer than two."""
    counts = torch.bincount(targets, minlength=num_classes)
    present = counts[counts > 0]
    if len(targets) > ALL_LABELLED_LIMIT or len(present) < 2 or int(present.min()) < 2:
        return None
    fold_of = stratified_folds(targets, min(MAX_FOLDS, int(present.min())), seed)
    features = features.float().cpu()
    rows, lift = _lifted(features, source)
    answers = lift.answers(features) if lift is not None else None
    return cross_validate(rows, targets.long().cpu(), num_classes, strength, fold_of, answers)


def stratified_folds(targets: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold number per picture, each class dealt round-robin over the folds in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.zeros(len(targets), dtype=torch.long)
    offset = 0
    for label in torch.unique(targets):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        # Continue the rotation from the previous class, so small classes do not all start in fold 0.
        fold_of[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold_of


def _solve(features: torch.Tensor, targets: torch.Tensor, num_classes: int, strength: float,
           start: tuple[torch.Tensor, torch.Tensor] | None = None, answers: torch.Tensor | None = None) -> HeadFit:
    """Class-weighted multinomial logistic regression on unit-length features, L2-pulled toward
    the class-mean prior (partly the backbone's ``answers`` for lifted rows), by L-BFGS; a bias
    only for even classes (see the module's notes)."""
    lengths = features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    z = features / lengths
    weights = balanced_class_weights(targets, num_classes)
    sample_weight = weights[targets]
    prior = (class_mean_prior(z, targets, num_classes) if answers is None
             else source_guided_prior(z, answers, targets, num_classes))
    # scikit-learn's C: 1/2 |W|^2 + C * (sum of weighted losses); here divided by the weights' sum.
    penalty = 1.0 / (strength * float(sample_weight.sum()))
    with_bias = classes_are_even(targets, num_classes)
    weight = (prior if start is None else start[0]).clone().requires_grad_(True)
    bias = (torch.zeros(num_classes) if start is None else start[1]).clone().requires_grad_(with_bias)
    optimizer = torch.optim.LBFGS([weight, bias] if with_bias else [weight], lr=1.0, max_iter=MAX_ITERATIONS,
                                  history_size=10, tolerance_grad=1e-6, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")
    curve: list[float] = []

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        losses = F.cross_entropy(z @ weight.T + bias, targets, reduction="none")
        loss = (losses * sample_weight).sum() / sample_weight.sum() + 0.5 * penalty * (weight - prior).pow(2).sum()
        loss.backward()
        curve.append(float(loss.detach()))
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    folded = weight.detach() / lengths.mean()
    # The solution in the fit's own space starts the fit of a neighbouring strength.
    return HeadFit(folded, bias.detach(), float(strength), weights.tolist(), curve, iterations,
                   start=(weight.detach(), bias.detach()))


def classes_are_even(targets: torch.Tensor, num_classes: int) -> bool:
    """Whether the biggest class has at most :data:`EVEN_RATIO` times the pictures of the smallest."""
    counts = torch.bincount(targets, minlength=num_classes)
    counts = counts[counts > 0]
    return len(counts) > 0 and float(counts.max()) <= EVEN_RATIO * float(counts.min())


def class_mean_prior(z: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's mean feature, centred on the mean of the class means and scaled to unit
    length times :data:`PRIOR_SCALE`: a nearest-class-mean classifier as a linear layer."""
    return PRIOR_SCALE * _centred_class_means(z, targets, num_classes)


def _centred_class_means(rows: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, the mean row minus the mean of the class means, at unit length (zero for a class
    without rows, and for all when fewer than two classes have rows)."""
    means = torch.zeros(num_classes, rows.shape[1])
    means.index_add_(0, targets, rows)
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).unsqueeze(1)
    means = means / counts
    present = torch.bincount(targets, minlength=num_classes) > 0
    if int(present.sum()) < 2:
        return torch.zeros_like(means)
    centred = means - means[present].mean(0)
    centred[~present] = 0
    return centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-12)


def source_guided_prior(z: torch.Tensor, answers: torch.Tensor, targets: torch.Tensor,
                        num_classes: int) -> torch.Tensor:
    """The class-mean prior of lifted rows ``z`` blended with the backbone's ``answers`` per class,
    which sit on the rows' source-score part: a class starts partly as the backbone's own scores
    for the classes it calls its pictures."""
    from_answers = torch.zeros(num_classes, z.shape[1])
    from_answers[:, z.shape[1] - answers.shape[1]:] = _centred_class_means(answers, targets, num_classes)
    blend = (1 - SOURCE_PRIOR) * _centred_class_means(z, targets, num_classes) + SOURCE_PRIOR * from_answers
    return PRIOR_SCALE * blend / blend.norm(dim=1, keepdim=True).clamp(min=1e-12)

