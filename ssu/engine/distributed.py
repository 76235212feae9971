"""Data parallelism for ``accelerate launch`` / ``torchrun``: split micro-batches, sum gradients.

One process is the plain case and touches no distributed machinery. Under a launcher
(``WORLD_SIZE`` > 1) every process loads the same theta_{t-1}, builds the same
micro-batch order from the same seed, and works on its share of each optimizer
step's micro-batches. The gradients are then summed across processes *before* the
saliency mask is computed, so every process sees the same gradient, the same mask
and makes the same update: the result equals the single-process run up to float
summation order. Only the main process writes artifacts.

Summing explicitly (instead of wrapping the model in DDP) keeps the masked update
exact when an accumulation group has fewer micro-batches than processes, and works
the same for full and LoRA fine-tunes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


class Workers:
    """This process's place among the launched processes (a single one by default)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.device: torch.device | None = None
        if self.world > 1:
            from accelerate import PartialState

            # Initialises torch.distributed (NCCL on GPUs, gloo on CPUs) from the
            # launcher's environment and picks this process's device.
            state = PartialState()
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: items rank, rank + world, ..."""
        return list(items[self.rank :: self.world])

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (sum) every trainable gradient; a process with no micro-batch adds zeros."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
