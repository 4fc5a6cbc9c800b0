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

import contextlib
import dataclasses
import datetime
import functools
import gc
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from transfer.core.errors import TransferError
from transfer.runtime.launch import RANK_OUTCOME_FILE as OUTCOME_FILE  # one name for the file both sides read
from transfer.core.machine import cpu_cores
from transfer.core.runs import Cancelled, RunDir, atomic_write_json
from transfer.training.tasks import ImageTask

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # a first epoch's feature pass can take long


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes training this run together (1 without a process group)."""
    return dist.get_world_size() if _group_ready() else 1


def rank() -> int:
    return dist.get_rank() if _group_ready() else 0


def is_main() -> bool:
    """Whether this process writes the run directory."""
    return rank() == 0


# --------------------------------------------------------------------------- the sampler


def epoch_seed(seed: int, epoch: int, rank_index: int = 0) -> int:
    """A seed that depends only on the run's seed, the epoch and (for per-rank draws) the rank."""
    return (seed * 1_000_003 + epoch * 7_919 + rank_index * 104_729) % 2**63


class SeededShardSampler:
    """The order of one epoch's training pictures and this rank's share of each global batch.

    Every rank draws the same order from the seed and the epoch alone, without talking to
    the others; a global batch is split by stride, so the shares are disjoint and together
    cover the batch. A resumed run draws the same orders again.
    """

    def __init__(self, size: int, seed: int, world: int = 1, rank_index: int = 0):
        self.size, self.seed, self.world, self.rank = size, seed, world, rank_index

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.rank :: self.world]

    def epoch_shards(self, epoch: int, batch_size: int) -> list[torch.Tensor]:
        order = self.order(epoch)
        return [self.shard(order[start : start + batch_size]) for start in range(0, self.size, batch_size)]


def contiguous_chunk(count: int, world: int, rank_index: int) -> tuple[int, int]:
    """``[start, end)`` of this rank's part when ``count`` items are cut into ``world`` runs."""
    return count * rank_index // world, count * (rank_index + 1) // world


# --------------------------------------------------------------------------- what the trainer asks of the ranks


class SingleProcess:
    """The trainer's view of its fellow ranks when it has none."""

    size, rank, is_main = 1, 0, True

    def agree(self, local: bool) -> bool:
        return local

    def from_main(self, load: Callable[[], object]):
        return load()

    def sharded_extraction(self, extract: Callable) -> Callable:
        return extract

    def image_task_class(self):
        return ImageTask

    def describe(self) -> str:
        return ""


class RankGroup:
    """The collectives the trainer needs, over an initialised process group."""

    def __init__(self):
        self.size, self.rank = dist.get_world_size(), dist.get_rank()
        self.is_main = self.rank == 0
        nccl = dist.get_backend() == "nccl"
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def describe(self) -> str:
        return f" × {self.size} processes ({dist.get_backend()})"

    def agree(self, local: bool) -> bool:
        """True on every rank when any rank says True."""
        flag = torch.tensor([1 if local else 0], device=self.comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def from_main(self, load: Callable[[], object]):
        """``load()`` on rank 0, its result handed to every rank (e.g. the checkpoint)."""
        box = [load() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, numbers: list[float]) -> list[float]:
        totals = torch.tensor(numbers, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(totals)
        return totals.tolist()

    def sharded_extraction(self, extract: Callable) -> Callable:
        """``extract`` (as :func:`transfer.models.features.extract_features`) on this rank's part of the
        pictures, the features of all parts gathered on every rank in the original order."""

        def run(samples: list, views: list[int], *, load_model, should_stop=None, progress=None, **options):
            load_model()  # a head that needs pictures must be found on every rank, not only where computed
            start, end = contiguous_chunk(len(samples), self.size, self.rank)
            scale, vectors = len(samples) / max(1, end - start), len(samples) * len(views)

            def scaled(done: int, _total: int, seconds: float) -> None:  # this rank's pace stands for all
                progress(min(vectors, round(done * scale)), vectors, seconds)

            from transfer.models.features import ExtractionStats

            features, stats, stopped = None, ExtractionStats(), False
            try:
                if end > start:  # fewer pictures than ranks leaves some with none
                    features, stats = extract(samples[start:end], views, load_model=load_model,
                                              should_stop=should_stop, progress=scaled if progress else None,
                                              **options)
            except Cancelled:
                stopped = True
            if self.agree(stopped):
                raise Cancelled()
            parts = [part for part in self.gather(features) if part is not None and len(part)]
            computed, cached = self.sum([stats.computed, stats.cached])
            stats = dataclasses.replace(stats, computed=int(computed), cached=int(cached))
            return torch.cat(parts) if parts else features, stats

        return run

    def image_task_class(self):
        return functools.partial(DistributedImageTask, ranks=self)


class DistributedImageTask(ImageTask):
    """Fine-tuning or training from scratch with each rank on its share of every batch."""

    sharded = True

    def __init__(self, *args, ranks: RankGroup, **kwargs):
        self.ranks = ranks
        super().__init__(*args, **kwargs)
        self.sampler = SeededShardSampler(self.train_bank.shape[0], self.config.seed, self.ranks.size,
                                          self.ranks.rank)
        self.augment_generator = torch.Generator()

    def train_mode(self, epoch: int) -> None:
        trainable_before = self.plan_is_head_only
        super().train_mode(epoch)
        if self.forward_module is self.module or trainable_before != self.plan_is_head_only:
            self.wrap()
        # Draws per rank and per epoch: a resumed run repeats them without any saved state.
        self.augment_generator.manual_seed(epoch_seed(self.config.seed, epoch, self.ranks.rank))
        torch.manual_seed(epoch_seed(self.config.seed, epoch, self.ranks.rank))

    def wrap(self) -> None:
        """DDP tracks the parameters that train when it is built, so it is rebuilt whenever
        that set changes (head-only epochs, then the backbone too)."""
        from torch.nn.parallel import DistributedDataParallel

        self.forward_module = self.module  # drop the old wrapper and its gradient hooks first
        gc.collect()
        devices = [self.setup.device.index] if self.setup.kind == "cuda" else None
        # Buffers are synchronised when the wrapper is built and before validation, not on every
        # forward: ranks run different numbers of parts per step on the CPU.
        self.forward_module = DistributedDataParallel(self.module, device_ids=devices, forward_sync_buffers=False)

    def forward_train(self, indices: torch.Tensor, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return super().forward_train(indices, epoch, self.augment_generator)

    def gradient_sync(self, last_part: bool):
        return contextlib.nullcontext() if last_part else self.forward_module.no_sync()

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return self.sampler.order(epoch)

    def shard(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's part of ``batch`` and its weight in the batch's mean loss. A rank left
        without pictures (a last batch smaller than the number of ranks) still steps, on one
        picture at weight 0, so every rank joins the gradient exchange."""
        local = self.sampler.shard(batch)
        if len(local) == 0:
            return batch[:1], 0.0
        return local, len(local) * self.ranks.size / len(batch)

    def batch_totals(self, loss: torch.Tensor, hits: torch.Tensor, local: int, weight: float,
                     batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole batch's mean loss and hits from every rank's share."""
        counted = local if weight > 0 else 0
        totals = torch.stack([loss.detach().float() * counted, hits.float() * (counted > 0)])
        totals = totals.to(self.ranks.comm_device)
        dist.all_reduce(totals)
        return (totals[0] / batch).to(loss.device), totals[1].round().long().to(hits.device)

    def val_logits(self, batch_size: int) -> torch.Tensor:
        for buffer in self.module.buffers():  # every rank validates rank 0's model
            dist.broadcast(buffer, src=0)
        start, end = contiguous_chunk(self.val_bank.shape[0], self.ranks.size, self.ranks.rank)
        mine = self.logits_of(self.val_bank[start:end], batch_size).cpu()
        parts = [part for part in self.ranks.gather(mine) if len(part)]
        return torch.cat(parts).to(self.setup.device)


def current_ranks() -> SingleProcess | RankGroup:
    return RankGroup() if world_size() > 1 else SingleProcess()


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
    if _group_ready():
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
        config = join_group(TrainConfig.from_dict(run.config))
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
