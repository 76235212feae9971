"""Processes through accelerate: one plain process, or DDP / FSDP under ``accelerate launch``.

A plain ``ssu step`` is one process and touches no distributed machinery: the model
is used as it is and every operation is the one-process one (bit-identical runs).
Under a launcher (``accelerate launch``, ``torchrun``) accelerate sets up the process
group (NCCL on GPUs, gloo on CPUs) and wraps the model in DDP. When the launch config
asks for FSDP (``distributed_type: FSDP``), ssu shards the model itself with torch's
FSDP2 ``fully_shard`` (:meth:`Processes.shard`: each transformer block, then the
root): accelerate's FSDP plugin accepts only accelerators, and one code path for GPUs
and CPUs is the one the test suite runs (two gloo processes,
``tests/test_distributed.py``). On top of either, this class adds what ssu's loop needs:

- **work**: every process builds the same micro-batch order from the same seed and
  takes its share of each optimizer step's *windows* (not micro-batches, so a group
  with fewer micro-batches than processes still keeps every process busy);
- **gradients**: DDP and FSDP average across processes in the last backward of an
  optimizer step (the others run under ``no_sync``), so each process scales its loss
  by the world size and the result is the one-process sum;
- **saliency**: under FSDP each process holds a shard of every gradient, so the mask's
  threshold is merged from every process's statistics (:meth:`gather`, :meth:`sum`)
  and each process masks its own shard, before the optimizer step;
- **the step's result**: full parameters on the main process (:meth:`full_parameters`),
  or, for a full fine-tune under FSDP, the change computed shard by shard against a
  per-shard snapshot and gathered one tensor at a time (:meth:`gather`).

DeepSpeed keeps gradients in its own partitioned buffers and applies them inside its
engine's step, where the saliency mask cannot reach them; it is refused in one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from ssu.engine.saliency import local
from ssu.errors import SSUError

KINDS = ("none", "ddp", "fsdp")


def _cpu_only(device) -> bool:
    return (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0; always, for one process)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _fsdp_requested() -> bool:
    """The launch config asks for FSDP (accelerate's launcher exports it to every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


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
            self.kind = "fsdp" if kind == DistributedType.FSDP or _fsdp_requested() else "ddp"

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

    def shard(self, model):
        """Under FSDP, shard ``model`` in place with FSDP2's ``fully_shard`` -- every module of a
        class the model names in ``_no_split_modules`` (its transformer blocks), then the root
        (embeddings, tied head, final norm) -- and return it; otherwise, or when it is sharded
        already, return it unchanged. ``FSDP_RESHARD_AFTER_FORWARD`` from the launch config
        is honoured. Call before the optimizer is created: the parameters become DTensors."""
        if not self.sharded:
            return model
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(model, FSDPModule):
            return model
        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        blocks = set(getattr(base, "_no_split_modules", None) or [])
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
        return model

    def prepare(self, model, optimizer):
        """The model and optimizer as accelerate wraps them for DDP (unchanged for one process,
        and under FSDP, where :meth:`shard` did the wrapping)."""
        if self.accelerator is None or self.sharded:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def release(self) -> None:
        """Drop accelerate's references to what it prepared (the optimizer and its moments) once
        a fine-tune ends; the caller keeps the model it was handed."""
        if self.accelerator is not None:
            self.accelerator.free_memory()

    def no_sync(self, model, skip: bool):
        """Accumulate this backward locally (``skip``) or reduce gradients across processes."""
        if self.accelerator is None or not skip:
            return contextlib.nullcontext()
        if self.sharded:
            return _fsdp_no_sync(model)
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, params, max_norm: float) -> None:
        if self.accelerator is None or self.sharded:
            # Over DTensor shards torch's clip computes the norm of the whole gradient.
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
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
        return model if self.accelerator is None or self.sharded else self.accelerator.unwrap_model(model)

    @contextlib.contextmanager
    def full_parameters(self, model) -> Iterator[torch.nn.Module]:
        """The unwrapped model with whole (unsharded) parameters, for reading the step's result.

        A collective under FSDP: every process must enter it.
        """
        inner = self.unwrap(model)
        if self.kind != "fsdp":
            yield inner
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in inner.modules() if isinstance(m, FSDPModule)]
        for m in units:
            m.unshard()
        try:
            yield inner
        finally:
            for m in units:
                m.reshard()

    def snapshot(self, model) -> dict[str, torch.Tensor]:
        """A float32 host copy of this process's part of every trainable weight: the whole
        weight, or under FSDP its local shard -- never a full copy on every process."""
        return {n: local(p).detach().to("cpu", torch.float32, copy=True)
                for n, p in model.named_parameters() if p.requires_grad}

    def change(self, model, snapshot: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """θ − snapshot per trainable weight, in float32: whole tensors on the main process
        (None elsewhere). Under FSDP each process subtracts its own shard and the difference
        is gathered one tensor at a time (a collective: every process calls it)."""
        out = {}
        for n, p in model.named_parameters():
            if n not in snapshot:
                continue
            d = local(p).detach().float() - snapshot[n].to(local(p).device)
            if hasattr(p, "to_local"):
                from torch.distributed.tensor import DTensor

                d = DTensor.from_local(d, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            if self.is_main:
                out[n] = d
        return out if self.is_main else None

    def barrier(self) -> None:
        if self.distributed:
            self.state.wait_for_everyone()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    """FSDP2's form of ``no_sync``: keep this backward's gradients local, unreduced."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


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
