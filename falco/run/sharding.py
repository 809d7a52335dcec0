"""Sharding a run across processes started by ``torchrun`` (one node or several).

``torchrun --nproc-per-node N -m falco anonymize ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE`` set. Each rank owns every ``WORLD_SIZE``-th input (in key order) and
skips those already finished, writes its own outputs and records them in the shared run manifest (SQLite in WAL
mode, safe for several writers on one file system). A crashed rank's inputs stay unfinished
and are picked up by the next run. Rank 0 alone prepares shared state (stale temp files, the
bank built on the fly) while the others wait at a barrier; nothing else is exchanged.

For clusters without torchrun, any launcher that sets ``RANK`` and ``WORLD_SIZE`` works (a
Slurm array sets them from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, see the README):
the tasks then run without a process group, so shared state (the bank) must exist beforehand.

Reproducibility: sharding changes which faces share a batch (a rank gathers its batches from
every N-th photo), and torchrun starts each worker with ``OMP_NUM_THREADS=1`` unless it is set.
Kernels round differently for other batch sizes and thread counts, and Adam turns that
rounding into steps of up to about the learning rate in the code components whose gradient is
near zero. So on the same machine and software a sharded run equals a single process bit for
bit only with the same batches and thread count (on CPU: ``--batch-size 1`` and a fixed
``OMP_NUM_THREADS``, as tests/test_anonymize_cli.py checks); otherwise a few code components
differ, by up to ~2·lr per step (a step taken the other way). A resumed rank owns the
same photos (shards are taken from all inputs, finished or not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from falco.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_shard() -> Shard:
    """Read ``RANK``/``WORLD_SIZE`` (torchrun's variables); a single process when they are unset."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"RANK/WORLD_SIZE must be integers, got {os.environ.get('RANK')!r}/"
                         f"{os.environ.get('WORLD_SIZE')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
    return Shard(rank, world)


def shard_items(items: Sequence[T], shard: Shard) -> list[T]:
    """Every ``world_size``-th item starting at ``rank`` (items are already in key order)."""
    return list(items[shard.rank::shard.world_size])


def launched_by_torchrun() -> bool:
    """True under torchrun (or when ``FALCO_PROCESS_GROUP=1`` asks for a process group)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or os.environ.get("FALCO_PROCESS_GROUP") == "1"


def init(shard: Shard, device: torch.device) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) when running under torchrun.

    Launchers that only set ``RANK``/``WORLD_SIZE`` (a Slurm array) get no process group:
    each task works on its shard alone, without barriers.
    """
    import torch.distributed as dist

    if shard.distributed and launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier(shard: Shard) -> None:
    """Wait for every rank (no-op for a single process)."""
    import torch.distributed as dist

    if shard.distributed and dist.is_initialized():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, give each local rank its own GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(1, torch.cuda.device_count()))
    return device


def merge_summaries(parts: list[dict]) -> dict:
    """Add up the per-rank run summaries (counts summed, failures concatenated)."""
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0) + value
    return merged


def finish(shard: Shard) -> None:
    """Leave the process group."""
    import torch.distributed as dist

    if shard.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
