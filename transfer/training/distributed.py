"""Distributed training, rank side: one process per GPU (or per share of the CPU), started by torchrun.

    python -m torch.distributed.run --nproc-per-node N -m transfer.training.distributed RUN_DIR

Each process reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), joins the process group (gloo on the CPU, nccl on CUDA
with ``cuda:LOCAL_RANK``) and runs the normal training on the run directory. Without
``WORLD_SIZE`` (or with 1) it is plain single-process training.

How the work is shared:

- ``finetune`` and ``scratch``: the model is wrapped in DistributedDataParallel. The batch
  size is the global batch: every step takes the next ``batch_size`` pictures of an order that
  depends only on the seed and the epoch (:class:`SeededShardSampler`), and each rank trains
  on its share of them, so the optimizer sees the same batch as one process would and the
  learning rate stays as configured. On the CPU a rank's share goes through the model in
  parts, gradients synchronised only after the last one. Validation is sharded and gathered.
- ``features``: backbone features (and fine-tuning's linear probe) are computed shard by
  shard and gathered; every rank then trains the small head identically.
- Rank 0 alone writes the run directory; the others write nothing. Cancelling is decided
  together at each step (any rank that sees the request stops all), so no rank waits
  forever in a collective. Resuming loads rank 0's checkpoint and hands it to every rank.
- Rank 0 writes ``rank-outcome.json``: ``{"state": "finished" | "cancelled" | "failed",
  "message": "..."}`` and exits 0 only when finished.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from transfer.core.errors import TransferError
from transfer.core.runs import RANK_OUTCOME_FILE as OUTCOME_FILE  # one name for the file both sides read
from transfer.core.machine import cpu_cores
from transfer.core.runs import Cancelled, RunDir
from transfer.core.files import atomic_write_json
from transfer.training.ranks import COLLECTIVE_TIMEOUT, group_ready, is_main, rank, world_size

# --------------------------------------------------------------------------- one rank's process


def _environment_number(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def share_the_cores() -> None:
    """Ranks on one machine split its cores (or the worker's share of them) between them,
    instead of each starting a thread per core. (torchrun's default OMP_NUM_THREADS=1 would
    leave all but one core per rank idle; the trainer sets torch's threads from this share.)"""
    local_world = _environment_number("LOCAL_WORLD_SIZE", 1)
    if local_world <= 1:
        return
    cores = cpu_cores()
    cores = min(cores, _environment_number("TRANSFER_WORKER_THREADS", cores))
    os.environ["TRANSFER_WORKER_THREADS"] = str(max(1, cores // local_world))


def uses_cuda(config) -> bool:
    return config.device.split(":")[0] in ("auto", "cuda") and torch.cuda.is_available()


def join_group(config) -> object:
    """The process group from torchrun's environment; returns the config this rank trains with."""
    if _environment_number("WORLD_SIZE", 1) <= 1:
        return config
    share_the_cores()
    local_rank = _environment_number("LOCAL_RANK", 0)
    if uses_cuda(config):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device("cuda", local_rank))
        return dataclasses.replace(config, device=f"cuda:{local_rank}")
    if config.device.split(":")[0] not in ("auto", "cpu"):
        raise TransferError(f"Training on several processes works on CUDA GPUs or the CPU, not on "
                            f"'{config.device}'; choose --device cuda or cpu.")
    dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return dataclasses.replace(config, device="cpu")


def leave_group() -> None:
    if group_ready():
        dist.destroy_process_group()


def lost_a_fellow_rank(error: BaseException) -> bool:
    """Whether ``error`` came from a collective whose other side went away."""
    if world_size() <= 1:
        return False
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        words in text for words in ("connection closed by peer", "connection reset", "gloo", "nccl"))


def train_as_rank(run: RunDir) -> tuple[str, str]:
    """Join the group, train, and say how it ended: ``(state, sentence)``."""
    from transfer.training.config import TrainConfig
    from transfer.training.loop import Trainer

    try:
        config = join_group(TrainConfig.from_saved(run.config))
        Trainer(run, config).train()
        return "finished", (run.status().get("message") if is_main() else None) or "Finished."
    except Cancelled:
        epoch = run.status().get("epoch") or 0
        return "cancelled", f"Cancelled; the last finished epoch ({epoch}) is kept and resuming continues after it."
    except TransferError as error:
        return "failed", str(error)
    except Exception as error:  # a bug or an environment problem: keep the trace in the log
        traceback.print_exc()
        if lost_a_fellow_rank(error):
            epoch = run.status().get("epoch") or 0
            return "failed", (f"Another training process of this run stopped, so this one could not go on; "
                              f"resuming continues after the last finished epoch ({epoch}).")
        return "failed", f"Training failed on rank {rank()}: {type(error).__name__}: {error}."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m transfer.training.distributed RUN_DIR", file=sys.stderr)
        return 2
    run = RunDir(Path(args[0]))
    outcome_path = run.path / OUTCOME_FILE
    if _environment_number("RANK", 0) == 0:
        outcome_path.unlink(missing_ok=True)  # a resumed run must not report the last attempt's end
    state, message = train_as_rank(run)
    if _environment_number("RANK", 0) == 0:
        atomic_write_json(outcome_path, {"state": state, "message": message})
    print(f"rank {rank()} of {world_size()}: {state}: {message}", flush=True)
    leave_group()
    return 0 if state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
