"""Two runs side by side on the same validation pictures: did training again help?

Each run writes its validation answers (``val_predictions.json``, :mod:`transfer.analysis.evaluate`),
each picture named by its content hash. The comparison takes the pictures both runs were
measured on, with the label the *newer* run knows (a label corrected since the first run
counts as corrected for both), and reports each run's accuracy on them and the pictures that
went from wrong to right and from right to wrong. Pictures only one run saw are counted apart,
never mixed in, so the two accuracies are fair to compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from transfer.core.errors import TransferError
from transfer.analysis.evaluate import load_evaluation


class CompareError(TransferError):
    """The runs cannot be compared; the message says why."""


@dataclass
class Change:
    path: str
    sha256: str
    label: str
    before: str  # what the earlier run said
    after: str  # what the later run says


@dataclass
class RunComparison:
    before_run: str
    after_run: str
    pictures: int  # validation pictures both runs answered
    before_accuracy: float | None
    after_accuracy: float | None
    wrong_to_right: list[Change] = field(default_factory=list)
    right_to_wrong: list[Change] = field(default_factory=list)
    only_before: int = 0
    only_after: int = 0

    @property
    def gain(self) -> float | None:
        if self.before_accuracy is None or self.after_accuracy is None:
            return None
        return self.after_accuracy - self.before_accuracy

    def to_dict(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def compare_runs(before: Path | str, after: Path | str) -> RunComparison:
    """``before`` and ``after`` (run folders) on the validation pictures they share."""
    first, second = load_evaluation(before), load_evaluation(after)
    earlier = {p.sha256: p for p in first.predictions if p.sha256}
    later = {p.sha256: p for p in second.predictions if p.sha256}
    shared = [sha for sha in later if sha in earlier]
    if not shared:
        raise CompareError("These runs share no validation picture, so they cannot be compared fairly; "
                           "train again on the same data set (new pictures go to training).")
    result = RunComparison(Path(before).name, Path(after).name, len(shared), None, None,
                           only_before=len(set(earlier) - set(later)), only_after=len(set(later) - set(earlier)))
    right_before = right_after = 0
    for sha in shared:
        new = later[sha]
        truth = second.label(new.true_index)
        said_before = first.label(earlier[sha].predicted_index)
        said_after = second.label(new.predicted_index)
        was_right, is_right = said_before == truth, said_after == truth
        right_before += was_right
        right_after += is_right
        if was_right != is_right:
            change = Change(new.path, sha, truth, said_before, said_after)
            (result.wrong_to_right if is_right else result.right_to_wrong).append(change)
    result.before_accuracy = right_before / len(shared)
    result.after_accuracy = right_after / len(shared)
    return result
