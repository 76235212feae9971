"""Processes through accelerate: one plain process, or DDP / FSDP under ``accelerate launch``.

A plain ``ssu step`` is one process and touches no distributed machinery: the model
is used as it is and every operation is the one-process one (bit-identical runs).
Under a launcher (``accelerate launch``, ``torchrun``) accelerate sets up the process
group (NCCL on GPUs, gloo on CPUs), wraps the model -- DDP, or FSDP when the launch
config asks for it -- and this class adds what ssu's loop needs on top:

- **work**: every process builds the same micro-batch order from the same seed and
  takes its share of each optimizer step's *windows* (not micro-batches, so a group
  with fewer micro-batches than processes still keeps every process busy);
- **gradients**: DDP and FSDP average across processes in the last backward of an
  optimizer step (the others run under ``no_sync``), so each process scales its loss
  by the world size and the result is the one-process sum;
- **saliency**: under FSDP each process holds a shard of every gradient, so the mask's
  threshold is merged from every process's statistics (:meth:`gather`, :meth:`sum`)
  and each process masks its own shard, before the optimizer step;
- **the step's result**: full parameters on the main process (:meth:`full_parameters`).

DeepSpeed keeps gradients in its own partitioned buffers and applies them inside its
engine's step, where the saliency mask cannot reach them; it is refused in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ssu.errors import SSUError

KINDS = ("none", "ddp", "fsdp")


def _cpu_only(device) -> bool:
    return (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0; always, for one process)."""
    from accelerate import PartialState

    return PartialState().is_main_process


class Processes:
    """This process's place among the launched processes (a single one by default)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        from accelerate import PartialState

        # cpu=True lets gloo processes on a machine without accelerators form a group.
        self.state = PartialState(cpu=_cpu_only(device))
        self.accelerator = None
        self.kind = "none"
        self.rank, self.world = self.state.process_index, self.state.num_processes
        if self.state.use_distributed:
            from accelerate import Accelerator
            from accelerate.utils import DistributedType

            self.accelerator = Accelerator(cpu=_cpu_only(device))
            kind = self.accelerator.distributed_type
            if kind == DistributedType.DEEPSPEED:
                raise SSUError("DeepSpeed applies gradients inside its own step, where the saliency mask cannot "
                               "reach them; launch with a DDP or FSDP accelerate config (experiments/accelerate/)")
            self.kind = "fsdp" if kind == DistributedType.FSDP else "ddp"

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state.use_distributed else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Each process holds a shard of every gradient (FSDP), not the whole of it (DDP)."""
        return self.kind == "fsdp"

    def prepare(self, model, optimizer):
        """The model and optimizer as accelerate wraps them (unchanged for one process)."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def no_sync(self, model, skip: bool):
        """Accumulate this backward locally (``skip``) or reduce gradients across processes."""
        if self.accelerator is None or not skip:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, params, max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:  # FSDP computes the norm over every shard
            self.accelerator.clip_grad_norm_(params, max_norm)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (``t`` itself for one process)."""
        if self.accelerator is None:
            return t
        return self.accelerator.reduce(t, reduction="sum")

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world, *t.shape): every process's ``t`` in rank order."""
        if self.accelerator is None:
            return t.unsqueeze(0)
        return self.accelerator.gather(t.unsqueeze(0))

    def unwrap(self, model):
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    @contextlib.contextmanager
    def full_parameters(self, model) -> Iterator[torch.nn.Module]:
        """The unwrapped model with whole (unsharded) parameters, for reading the step's result.

        A collective under FSDP: every process must enter it.
        """
        inner = self.unwrap(model)
        if self.kind != "fsdp":
            yield inner
            return
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(model, FSDP):  # FSDP1
            with FSDP.summon_full_params(model, writeback=False):
                yield inner
            return
        from torch.distributed.fsdp import FSDPModule  # FSDP2: fully_shard

        units = [m for m in inner.modules() if isinstance(m, FSDPModule)]
        for m in units:
            m.unshard()
        try:
            yield inner
        finally:
            for m in units:
                m.reshard()

    def barrier(self) -> None:
        if self.distributed:
            self.state.wait_for_everyone()


def leave_process_group() -> None:
    """End this process's part in a launched group: wait for every process, then destroy
    the group. Called where a process's distributed work ends (``ssu step`` after the
    step), not inside ``run_step``, which a caller may run several times. A process that
    simply exits while its peer's gloo threads still talk to it makes the peer abort
    ("terminate called without an active exception", seen in the sharded-saliency test);
    a no-op for one process."""
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()
    if state.use_distributed and dist.is_initialized():
        state.wait_for_everyone()
        state.destroy_process_group()
