"""One rank of a distributed demo run: ``python -m demo_ranks RUN_DIR``, started by
torchrun as ``transfer.training.distributed`` is for training, but without torch in the ranks.

It keeps the rank side's contract (see ``transfer.training.distributed``), so the job tests exercise the
real launch, cancel, kill and resume paths in seconds: rank 0 alone writes the run (the demo
job of ``demo_jobs``: events, checkpoint, status) and then ``rank-outcome.json``, exiting
0 only when it finished; the other ranks keep the same pace, step by step, and stop at a
cancel request as training ranks do.
"""

from __future__ import annotations

import os
import sys
import time

from transfer.core.runs import RANK_OUTCOME_FILE
from transfer.core.runs import CANCELLED, FAILED, FINISHED, Cancelled, RunDir
from transfer.core.files import atomic_write_json
from demo_jobs import demo_job


def main(argv: list[str] | None = None) -> int:
    run = RunDir((argv or sys.argv[1:])[0])
    if int(os.environ.get("RANK", "0")) == 0:
        return main_rank(run)
    follow(run)
    return 0


def main_rank(run: RunDir) -> int:
    try:
        demo_job(run)
    except Cancelled:
        epoch = run.status().get("epoch") or 0
        return _outcome(run, CANCELLED, f"Cancelled; epoch {epoch} is kept." if epoch else
                        "Cancelled; no epoch had finished.")
    except Exception as error:  # the demo's planned failure, as a training error would be
        return _outcome(run, FAILED, f"Training failed: {error}.")
    return _outcome(run, FINISHED, f"Finished on {os.environ.get('WORLD_SIZE', '1')} processes.")


def follow(run: RunDir) -> None:
    """A rank other than 0: the demo's steps without writing anything, until rank 0 is done."""
    config = run.config
    steps = int(config.get("steps_per_epoch", 5)) * int(config.get("epochs", 3))
    step_seconds = float(config.get("epoch_seconds", 0.5)) / int(config.get("steps_per_epoch", 5))
    for _ in range(steps):
        if run.cancel_requested() or (run.path / RANK_OUTCOME_FILE).exists():
            return
        time.sleep(step_seconds)


def _outcome(run: RunDir, state: str, message: str) -> int:
    atomic_write_json(run.path / RANK_OUTCOME_FILE, {"state": state, "message": message})
    return 0 if state == FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())
