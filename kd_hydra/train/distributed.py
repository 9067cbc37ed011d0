"""Data-parallel workers of one job on torch.distributed: who this process is, and the few collective steps the
loop needs (sums, broadcasts, the split of a global batch, the DistributedDataParallel wrapper).

One process (``world == 1``) is :data:`SINGLE`: no process group exists and every step is the identity, so a
1-device run computes exactly what it computed before distributed training existed. Workers are started by
PyTorch's launcher (``torch.distributed.run``: ``trainer.devices=N`` or ``torchrun``) and join from the standard
environment (``env://``): NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Environment variables torch.distributed's launcher sets in every worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective waits for the other workers before failing (a dead peer ends the job, never hangs it).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def launched_world() -> int:
    """The world size torch.distributed's launcher gave this process (1 when it was not started by one)."""
    if not all(os.environ.get(name) for name in LAUNCH_ENV):
        return 1
    return int(os.environ["WORLD_SIZE"])


@dataclass(frozen=True)
class Workers:
    """This process's place among the ``world`` data-parallel workers of one job (``rank`` 0 leads: it alone
    writes files), and the collective steps of the training loop. ``local_rank`` picks the CUDA device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Whether this process writes the job's files (rank 0, or the only process)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def rows(self, count: int) -> slice:
        """This worker's rows of a global batch of ``count`` samples: contiguous, the first ``count % world``
        workers one more (a worker may get none of a short last batch)."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def loss_weight(self, local: int, total: int) -> float:
        """The factor on a worker's mean loss over ``local`` of ``total`` samples that makes the gradient averaged
        over workers equal the gradient of the mean loss over all ``total`` (exact for per-sample losses)."""
        return local * self.world / total if self.parallel else 1.0

    def sum_with_count(self, sums: Tensor, count: int) -> tuple[Tensor, int]:
        """``sums`` and a sample ``count`` summed over workers (one collective)."""
        if not self.parallel:
            return sums, count
        totals = self.sum_(torch.cat((sums, sums.new_tensor([count]))))
        return totals[:-1], int(totals[-1].item())

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over workers, in place; returns it."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """The leader's ``value`` (any picklable object), on every worker."""
        if not self.parallel:
            return value
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every worker's ``value``, by rank, on every worker."""
        if not self.parallel:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def share_buffers(self, module: nn.Module) -> None:
        """Give every worker the leader's buffers of ``module`` (BatchNorm running statistics: per-worker during an
        epoch, as DataParallel and DistributedDataParallel keep them, the leader's for evaluation and records)."""
        if not self.parallel:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def data_parallel(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over workers during backward); itself alone.

        Buffers are not broadcast at each forward (:meth:`share_buffers` does it before evaluation): per-worker
        BatchNorm statistics, and no copy of a method's large buffers (CRD's memory) per step.
        """
        if not self.parallel:
            return module
        device_ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        ddp = nn.parallel.DistributedDataParallel
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp).parameters
            else {"broadcast_buffers": False}
        )
        return ddp(module, device_ids=device_ids, **no_buffer_sync)

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """The workers' ``tensor`` rows concatenated in rank order, with gradients flowing back to each worker's
        own rows (full-batch semantics for losses that relate the samples of a batch). Shards may differ in size."""
        if not self.parallel:
            return tensor
        return _GatherRows.apply(tensor, self)


class _GatherRows(torch.autograd.Function):
    """All workers' rows (padded to the largest share for the collective); the backward sums every worker's
    gradient of the concatenation and keeps this worker's rows (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, workers: Workers) -> Tensor:
        sizes = workers.gather(int(tensor.shape[0]))
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.rows = slice(sum(sizes[: workers.rank]), sum(sizes[: workers.rank + 1]))
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows], None


SINGLE = Workers()


def join(device_type: str) -> Workers:
    """Join the process group of the workers this launcher started (``env://``): NCCL on CUDA, gloo otherwise;
    :data:`SINGLE` when this process was not started as one of several workers."""
    world = launched_world()
    if world == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        store = _attempt_store(rank, world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    return Workers(rank=rank, world=world, local_rank=local_rank)


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The launcher's store (``MASTER_ADDR:MASTER_PORT``; the agent's, or rank 0's) under a prefix of this attempt:
    workers restarted after a failure never read the addresses their predecessors published there."""
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_serves,
        timeout=COLLECTIVE_TIMEOUT,
        multi_tenant=not agent_serves,
    )
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"kd-hydra/{run}/attempt-{attempt}/", store)


def leave(workers: Workers) -> None:
    """Destroy the process group ``workers`` joined (nothing for one process)."""
    if workers.parallel and dist.is_initialized():
        dist.destroy_process_group()
