"""Data-parallel training over several processes, as ``torchrun`` starts them.

``torchrun`` (one machine or several, through its rendezvous) sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` for every process; :func:`world_from_environment` reads them, so the
trainer needs no flag of its own. The process group uses ``gloo`` on CPUs and ``nccl`` on
CUDA devices.

The scheme, chosen so that N processes train the same model as one process with the same
GLOBAL batch (``labeled_batch`` + ``unlabeled_batch``):

- every rank runs the same seeded sampler and so sees the same global batch; rank r keeps
  rows ``r, r + N, ...`` of its labeled part and of its unlabeled part
  (:func:`rows_of_rank`), which is each rank drawing its own slices from one seeded stream;
- the students are wrapped in ``DistributedDataParallel``: gradients are averaged, so the
  weights stay identical on every rank;
- what hooks do after a step (memory banks, a second network) must agree on every rank, so
  a hook that says so (``TrainerHook.sees_whole_batch``) sees the whole global batch:
  :func:`gather_outputs` puts every rank's detached outputs back in global order;
- only rank 0 writes (checkpoints, config, TensorBoard, progress, the run lock).

The global batch sizes must divide by the number of ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from cctr.seg.guard import NonFiniteError, check_losses
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentOutput


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_environment(env: Mapping[str, str] = os.environ) -> World:
    """The world ``torchrun`` describes in ``env``; a single process without it."""
    try:
        world = World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from exc
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ValueError(f"bad torchrun environment: RANK={world.rank}, WORLD_SIZE={world.size}")
    return world


def start(world: World, device: torch.device) -> bool:
    """Join the process group when several ranks train and none is joined yet; True when
    this call joined it (and so :func:`stop` should leave it)."""
    if not world.active or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(labeled_batch: int, unlabeled_batch: int, world: World) -> None:
    """The global batch must split evenly over the ranks."""
    if labeled_batch % world.size or unlabeled_batch % world.size:
        raise ValueError(f"with {world.size} processes, labeled_batch ({labeled_batch}) and unlabeled_batch "
                         f"({unlabeled_batch}) must each be divisible by {world.size} (they are global batch sizes)")


def rows_of_rank(num_labeled: int, total: int, world: World) -> torch.Tensor:
    """int64 indices of this rank's rows of a global batch of ``total`` rows whose first
    ``num_labeled`` are labeled: every ``size``-th labeled row, then every ``size``-th
    unlabeled one, starting at ``rank``, so each rank keeps the labeled-first order."""
    rows = [*range(world.rank, num_labeled, world.size), *range(num_labeled + world.rank, total, world.size)]
    return torch.tensor(rows, dtype=torch.int64)


def gather_rows(local: torch.Tensor, num_labeled: int, total: int, world: World) -> torch.Tensor:
    """The global batch ``(total, ...)`` from every rank's ``local`` rows ``(total / size, ...)``
    (as :func:`rows_of_rank` chose them), in global order, on every rank."""
    if not world.active:
        return local
    pieces = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(pieces, local.contiguous())
    out = local.new_empty((total, *local.shape[1:]))
    for r, piece in enumerate(pieces):
        out[rows_of_rank(num_labeled, total, World(r, world.size))] = piece
    return out


def barrier(world: World) -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if world.active:
        dist.barrier()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all stop together)."""
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def check_losses_everywhere(step: int, terms: Mapping[str, torch.Tensor], world: World) -> None:
    """:func:`seg.guard.check_losses` on this rank, and a stop on every rank when any rank's
    loss is not finite (a rank that stopped alone would leave the others waiting forever)."""
    try:
        check_losses(step, terms)
    except NonFiniteError as exc:
        any_rank(True, world)
        raise exc
    if any_rank(False, world):
        raise NonFiniteError(f"step {step}: a loss term on another process is NaN or inf")


def gather_outputs(out: StudentOutput, whole: SliceBatch, world: World) -> StudentOutput:
    """A student's detached outputs for the whole global batch (this rank's alone when it is
    the only one)."""
    n, total = whole.num_labeled, whole.image.shape[0]
    return StudentOutput(*(gather_rows(t.detach(), n, total, world) for t in (out.logits, out.features, out.embedding)))
