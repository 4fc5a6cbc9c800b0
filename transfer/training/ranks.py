"""The ranks of a training run as the trainer sees them: one process, or a group started by torchrun.

The trainer asks :func:`current_ranks` for its fellow processes and treats one process and a
group alike; :mod:`transfer.training.distributed` is the rank process itself (it joins the group,
then runs the trainer). The sampler here gives every rank its share of an order that depends
only on the seed and the epoch, so a resumed run continues as it would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import gc
from typing import Callable

import torch
import torch.distributed as dist

from transfer.core.runs import Cancelled
from transfer.training.tasks import ImageTask

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # a first epoch's feature pass can take long


def group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes training this run together (1 without a process group)."""
    return dist.get_world_size() if group_ready() else 1


def rank() -> int:
    return dist.get_rank() if group_ready() else 0


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
